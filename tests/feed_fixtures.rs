//! Every feed fixture in `tests/fixtures/feeds/`, served over real HTTP and ingested by
//! the real binary in one run: each gives the expected article count or a clear error,
//! and none makes herald panic or stall.

mod support;

use support::feed_server::{FeedServer, Reply};
use support::{Site, free_port, repo};

/// (file, articles expected, or `None` for a feed that must fail with a parse error).
const EXPECTED: &[(&str, Option<u64>)] = &[
    ("atom-basic.xml", Some(3)),
    ("atom-html-content.xml", Some(2)),
    ("atom-many-links.xml", Some(2)),
    ("atom-no-ids.xml", Some(2)),
    ("atom-no-links.xml", Some(1)),
    ("atom-xml-base.xml", Some(2)),
    ("atom03.xml", Some(2)),
    ("billion-laughs.xml", Some(1)),
    ("empty.xml", None),
    ("external-entity.xml", Some(1)),
    ("jsonfeed-1.0.json", Some(2)),
    ("jsonfeed-1.1.json", Some(3)),
    ("jsonfeed-duplicate-ids.json", Some(2)),
    ("jsonfeed-html-and-relative.json", Some(2)),
    ("not-a-feed.html", None),
    ("rss091.xml", Some(3)),
    ("rss092.xml", Some(2)),
    ("rss10-rdf.xml", Some(3)),
    ("rss20-bare-ampersand.xml", Some(2)),
    ("rss20-basic.xml", Some(4)),
    ("rss20-breaking-category.xml", Some(3)),
    ("rss20-broken-hostile-html.xml", Some(2)),
    ("rss20-content-encoded.xml", Some(2)),
    ("rss20-duplicate-guids.xml", Some(3)),
    ("rss20-empty-channel.xml", Some(0)),
    ("rss20-hostile-html.xml", Some(2)),
    ("rss20-html-entities.xml", Some(2)),
    ("rss20-html-titles.xml", Some(3)),
    ("rss20-iso-8859-1.xml", Some(2)),
    ("rss20-koi8-r.xml", Some(1)),
    ("rss20-mislabelled-latin1.xml", Some(2)),
    ("rss20-missing-dates.xml", Some(2)),
    ("rss20-missing-titles.xml", Some(2)),
    ("rss20-no-encoding-declaration.xml", Some(2)),
    ("rss20-no-guid.xml", Some(3)),
    ("rss20-odd-dates.xml", Some(6)),
    ("rss20-permalink-guids.xml", Some(2)),
    ("rss20-relative-links.xml", Some(3)),
    ("rss20-shift-jis.xml", Some(1)),
    ("rss20-stray-byte-before-prolog.xml", Some(2)),
    ("rss20-unsafe-links.xml", Some(1)),
    ("rss20-utf-16.xml", Some(2)),
    ("rss20-utf-8-bom.xml", Some(1)),
    ("rss20-utf8-declared-latin1.xml", Some(2)),
    ("rss20-whitespace.xml", Some(1)),
    ("rss20-windows-1252.xml", Some(2)),
    ("truncated.xml", None),
];

/// The fixtures that break XML (or their encoding label) the ways publishers do: each
/// is read after repairs and marked recovered.
const RECOVERED: &[&str] = &[
    "atom03.xml",
    "rss20-bare-ampersand.xml",
    "rss20-broken-hostile-html.xml",
    "rss20-html-entities.xml",
    "rss20-mislabelled-latin1.xml",
    "rss20-no-encoding-declaration.xml",
    "rss20-stray-byte-before-prolog.xml",
    "rss20-utf8-declared-latin1.xml",
];

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("json") => "application/feed+json",
        Some("html") => "text/html",
        _ => "application/xml",
    }
}

#[test]
fn every_fixture_ingests_with_its_expected_count() {
    let dir = repo().join("tests/fixtures/feeds");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let listed: Vec<String> = EXPECTED.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        on_disk, listed,
        "every fixture needs an expected count here"
    );
    assert!(on_disk.len() >= 30);

    let server = FeedServer::start();
    let mut feeds = Vec::new();
    for (name, _) in EXPECTED {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        server.route(
            &format!("/feeds/{name}"),
            Reply::ok(content_type(name), bytes),
        );
        feeds.push(format!("\"{}\"", server.url(&format!("/feeds/{name}"))));
    }
    let site = Site::new(free_port())
        .with_extra(
            "[ingest]\nallow_private = true\nconcurrency = 8\n[digest]\nmax_stories = 500\n",
        )
        .with_regions(&format!(
            "[[regions]]\nslug = \"fixtures\"\nname = \"Fixtures\"\nfeeds = [{}]\n",
            feeds.join(", ")
        ));
    let run = site.run(&["ingest"]);
    let out = run.stdout();
    assert!(!run.stderr().contains("panicked"), "{}", run.stderr());
    let mut total = 0;
    for (name, expected) in EXPECTED {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("/feeds/{name} ")))
            .unwrap_or_else(|| panic!("no line for {name} in:\n{out}"));
        match expected {
            Some(n) => {
                assert!(
                    line.contains(&format!("  {n} new, 0 updated, 0 unchanged")),
                    "{name}: {line}"
                );
                total += n;
            }
            None => assert!(
                line.contains("FAILED: not a valid RSS, Atom or JSON feed"),
                "{name}: {line}"
            ),
        }
    }
    assert!(
        !run.success(),
        "three fixtures are not feeds, so ingest exits 1"
    );
    assert!(out.contains(&format!("{total} new")), "{out}");

    // The broken ones were read after repairs, and say so, with the first error, both
    // in the ingest's lines and in `herald status`; the well-formed ones do not.
    let status = site.run(&["status"]).stdout();
    for name in RECOVERED {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("/feeds/{name} ")))
            .unwrap();
        assert!(line.contains("(recovered: "), "{name}: {line}");
        let line = status
            .lines()
            .find(|l| l.contains(&format!("/feeds/{name} ")))
            .unwrap_or_else(|| panic!("no status line for {name} in:\n{status}"));
        assert!(
            line.contains("recovered (not well-formed: "),
            "{name}: {line}"
        );
    }
    for line in status.lines().filter(|l| l.contains("recovered")) {
        assert!(
            RECOVERED
                .iter()
                .any(|name| line.contains(&format!("/feeds/{name} "))),
            "marked recovered: {line}"
        );
    }

    // A digest of every fixture's stories, the broken and hostile ones included, has no
    // active markup but its own.
    let html = site
        .run(&["preview", "--region", "fixtures", "--format", "html"])
        .ok()
        .stdout();
    assert!(html.contains("Fish &amp; chips night"), "{html}");
    for active in [
        "<script",
        "<iframe",
        "<svg",
        "<img",
        "onerror=",
        "onload=",
        "onclick=",
        "javascript:",
        "<style",
        "<b>",
    ] {
        assert!(!html.contains(active), "{active} in the digest");
    }

    // What was stored is plain text with web links only, in the right characters.
    let titles: Vec<String> = site
        .sql("SELECT title FROM articles")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    for expected in [
        "Le café du marché rouvre ses portes",
        "“We’re ready,” says fire chief – again",
        "Новый мост откроют в декабре",
        "駅前に新しい図書館が開館",
        "Zoë’s bakery wins award",
        "Jalapeño festival draws crowds",
        "Exclusive: Mayor will not run again",
        "Rates rise 5% & fees — what it means",
        "Park cleanup",
        "Ferry schedule changes for the holiday weekend; the last sailing leaves at 6 p.m.",
        "Bread & Butter Fair returns to the green",
        "Café on Pier Street reopens after repairs",
        "Concurso de crème brûlée en el mercado",
        "Crème brûlée contest fills the harbour hall",
        "Trail crew clears the ridge path",
        "Snow closes the pass overnight",
        "Fish & chips night",
        "Café opens & hires",
    ] {
        assert!(
            titles.iter().any(|t| t == expected),
            "{expected:?} not in {titles:#?}"
        );
    }
    for row in site.sql("SELECT title || ' ' || summary, link FROM articles") {
        let (text, link) = (&row[0], &row[1]);
        assert!(
            !text.contains('<') || text.contains("< "),
            "markup left in {text:?}"
        );
        assert!(text.len() < 2_000, "entity expanded? {text:?}");
        assert!(!text.contains("root:"), "external entity read: {text:?}");
        assert!(
            link.starts_with("https://") || link.starts_with(&server.url("/")),
            "{link}"
        );
    }
    let relative = server.url("/news/root-relative");
    assert_eq!(
        site.sql(&format!(
            "SELECT COUNT(*) FROM articles WHERE link = '{relative}'"
        ))[0][0],
        "1"
    );
    // Items filed under an alert category are breaking: one RSS item, one JSON Feed tag.
    assert_eq!(
        site.sql("SELECT COUNT(*) FROM articles WHERE breaking = 1")[0][0],
        "2"
    );
    // Undated and implausibly dated items are dated when first seen.
    assert_eq!(
        site.sql("SELECT COUNT(*) FROM articles WHERE published_at IS NULL")[0][0],
        "0"
    );
}
