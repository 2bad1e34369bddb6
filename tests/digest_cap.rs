//! The story cap through the real binary: 40 new stories with `max_stories = 12` give a
//! digest of the top 12 (breaking first, then newest) and "And 28 more stories" linking
//! to the region's page; the stories left out lead the reader's next digests, none sent
//! twice; `herald preview` shows the same digest, cap included.

mod support;

use std::time::Duration;

use support::days::{deliver_on_day, ingest_on_day, parts, run_on_day};
use support::{PINNED_CLOCK, Site, SmtpServer, epoch};

const STORIES: usize = 40;
const BREAKING: [usize; 3] = [5, 17, 33];

/// An RSS feed of `STORIES` stories, "Story 00" the newest, ten minutes apart.
fn feed() -> String {
    let pinned = epoch(PINNED_CLOCK);
    let mut items = String::new();
    for i in 0..STORIES {
        let published = chrono::DateTime::from_timestamp(pinned - (i as i64 + 1) * 600, 0)
            .unwrap()
            .to_rfc2822();
        let category = if BREAKING.contains(&i) {
            "<category>Breaking</category>"
        } else {
            "<category>Civic</category>"
        };
        items.push_str(&format!(
            "<item><guid>cap-{i}</guid><title>Story {i:02}</title>
             <link>https://town.example/news/{i}</link><pubDate>{published}</pubDate>
             {category}<description>Details of item {i}.</description></item>\n"
        ));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<rss version=\"2.0\"><channel>
         <title>Town Crier</title><link>https://feed-site.example/</link>\n{items}</channel></rss>\n"
    )
}

/// The story numbers in a part's body (after the subject, which names the first), in
/// the order they appear.
fn stories(part: &str) -> Vec<usize> {
    let body = &part[part.find("new stor").expect("a story count")..];
    body.match_indices("Story ")
        .filter_map(|(at, _)| body.get(at + 6..at + 8)?.parse().ok())
        .collect()
}

#[test]
fn forty_stories_capped_at_twelve_lead_with_breaking_and_the_rest_follow_later() {
    let smtp = SmtpServer::start();
    let feed_path = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(feed_path.path(), feed()).unwrap();
    let site = Site::new(smtp.port)
        .with_extra("[digest]\nmax_stories = 12\n")
        .with_regions(&format!(
            "[[regions]]\nslug = \"town\"\nname = \"Town\"\ntimezone = \"UTC\"\n\
             url = \"https://town.example/news\"\nfeeds = [\"file://{}\"]\n",
            feed_path.path().display()
        ));
    // Stored ten seconds after the first slot's instant, whatever the pace of this
    // run: a left-out story leads the digests whose window reaches back to that slot
    // (README, "Top stories first, with a cap"), so the instant must not be left to the
    // clock's second ticking over.
    ingest_on_day(&site, 0);
    site.run(&[
        "subscribers",
        "add",
        "reader@example.org",
        "--region",
        "town",
        "--timezone",
        "UTC",
        "--confirmed",
    ])
    .ok();

    // Breaking first (newest first among them), then the newest of the rest.
    let first: Vec<usize> = vec![5, 17, 33, 0, 1, 2, 3, 4, 6, 7, 8, 9];
    let preview = run_on_day(&site, 0, &["preview", "--region", "town"]);
    assert_eq!(stories(&preview), first, "{preview}");
    assert!(
        preview.contains("40 new stories, the top 12 below"),
        "{preview}"
    );
    assert!(
        preview.contains("And 28 more stories from Town: https://town.example/news"),
        "{preview}"
    );

    let plan = run_on_day(&site, 0, &["plan"]);
    assert!(plan.contains("planned 1 email(s)"), "{plan}");
    deliver_on_day(&site, 0);
    let messages = smtp.wait_for(1, Duration::from_secs(10));
    let (text, html) = parts(&messages[0].1);
    assert_eq!(stories(&text), first, "{text}");
    assert_eq!(
        stories(&html),
        first,
        "the HTML part lists the same, in order"
    );
    assert!(text.contains("40 new stories, the top 12 below"), "{text}");
    assert!(
        text.contains("And 28 more stories from Town: https://town.example/news"),
        "{text}"
    );
    assert!(
        html.contains(r#"<a href="https://town.example/news""#)
            && html.contains("And 28 more stories from Town</a>"),
        "{html}"
    );
    // The preview showed exactly what was sent, story for story.
    assert_eq!(stories(&preview), stories(&text));

    // The stories left out are not counted as sent: they lead the next digests, in
    // the same order, and none comes twice.
    let mut seen: Vec<usize> = first.clone();
    for (day, expected, more) in [
        (
            1,
            vec![10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 21, 22],
            Some(16),
        ),
        (
            2,
            vec![23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 34, 35],
            Some(4),
        ),
    ] {
        let plan = run_on_day(&site, day, &["plan"]);
        assert!(plan.contains("planned 1 email(s)"), "day {day}: {plan}");
        deliver_on_day(&site, day);
        let messages = smtp.wait_for(day as usize + 1, Duration::from_secs(10));
        let (text, _) = parts(&messages[day as usize].1);
        assert_eq!(stories(&text), expected, "day {day}: {text}");
        if let Some(more) = more {
            assert!(
                text.contains(&format!("And {more} more stories from Town")),
                "day {day}: {text}"
            );
        }
        seen.extend(expected);
    }
    let mut unique = seen.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "a story went out twice: {seen:?}");

    // A left-out story stays a candidate for one period after the digest that left it
    // out: by the fourth day the last four are older than that, and nothing is sent.
    let plan = run_on_day(&site, 3, &["plan"]);
    assert!(plan.contains("planned 0 email(s)"), "{plan}");
    assert_eq!(smtp.messages().len(), 3);
}

#[test]
fn without_a_region_url_the_link_is_the_feeds_site_link() {
    let smtp = SmtpServer::start();
    let feed_path = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(feed_path.path(), feed()).unwrap();
    let site = Site::new(smtp.port)
        .with_extra("[digest]\nmax_stories = 30\n")
        .with_regions(&format!(
            "[[regions]]\nslug = \"town\"\nname = \"Town\"\ntimezone = \"UTC\"\n\
             feeds = [\"file://{}\"]\n",
            feed_path.path().display()
        ));
    site.run(&["ingest"]).ok();
    let preview = run_on_day(
        &site,
        0,
        &["preview", "--region", "town", "--format", "html"],
    );
    assert_eq!(stories(&preview).len(), 30);
    assert!(
        preview.contains(r#"<a href="https://feed-site.example/""#)
            && preview.contains("And 10 more stories from Town</a>"),
        "{preview}"
    );
}
