//! Ingest against a real local HTTP server that misbehaves: conditional GET, slow
//! answers, oversized and compressed bodies, entity bombs, huge feeds, redirects and
//! internal addresses. Each feed ends with its own clear result; the others succeed.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::feed_server::{FeedServer, Reply};
use support::{Site, free_port, repo};

fn rss(items: &[(&str, &str)]) -> String {
    let items: String = items
        .iter()
        .map(|(guid, title)| {
            format!(
                "<item><guid>{guid}</guid><link>https://news.test.example/{guid}</link><title>{title}</title></item>"
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\"?><rss version=\"2.0\"><channel><title>T</title>{items}</channel></rss>"
    )
}

fn region(feeds: &[String]) -> String {
    let feeds: Vec<String> = feeds.iter().map(|f| format!("\"{f}\"")).collect();
    format!(
        "[[regions]]\nslug = \"cascadia\"\nname = \"Across Cascadia\"\nfeeds = [{}]\n",
        feeds.join(", ")
    )
}

fn line_for<'a>(out: &'a str, feed: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(&format!("{feed} ")))
        .unwrap_or_else(|| panic!("no line for {feed} in:\n{out}"))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn a_second_poll_sends_validators_and_a_304_parses_nothing() {
    let server = FeedServer::start();
    let v1 = rss(&[("a", "Alpha"), ("b", "Beta"), ("c", "Gamma")]);
    let v2 = rss(&[
        ("a", "Alpha"),
        ("b", "Beta (corrected)"),
        ("c", "Gamma"),
        ("d", "Delta"),
    ]);
    let version = std::sync::Arc::new(std::sync::Mutex::new(1));
    let current = version.clone();
    server.route_with("/etag.xml", move |request| {
        let (tag, body) = match *current.lock().unwrap() {
            1 => ("\"v1\"", v1.clone()),
            _ => ("\"v2\"", v2.clone()),
        };
        if request.headers.get("if-none-match").map(String::as_str) == Some(tag) {
            return Reply::status(304).header("ETag", tag);
        }
        Reply::ok("application/rss+xml", body)
            .header("ETag", tag)
            .header("Last-Modified", "Sat, 21 Nov 2026 08:00:00 GMT")
    });
    // A server without validators is fetched in full each time: same items, unchanged.
    server.route(
        "/plain.xml",
        Reply::ok("application/rss+xml", rss(&[("p", "Plain")])),
    );
    let site = Site::new(free_port())
        .with_extra("[ingest]\nallow_private = true\n")
        .with_regions(&region(&[
            server.url("/etag.xml"),
            server.url("/plain.xml"),
        ]));

    let out = site.run(&["ingest"]).ok().stdout();
    assert!(
        line_for(&out, "/etag.xml").contains("3 new, 0 updated"),
        "{out}"
    );
    assert!(line_for(&out, "/plain.xml").contains("1 new"), "{out}");
    let first = &server.requests("/etag.xml")[0];
    assert!(!first.headers.contains_key("if-none-match"));

    let out = site.run(&["ingest"]).ok().stdout();
    assert!(
        line_for(&out, "/etag.xml").contains("unchanged (304 Not Modified, nothing parsed)"),
        "{out}"
    );
    assert!(
        line_for(&out, "/plain.xml").contains("0 new, 0 updated, 1 unchanged"),
        "{out}"
    );
    let second = &server.requests("/etag.xml")[1];
    assert_eq!(
        second.headers.get("if-none-match").map(String::as_str),
        Some("\"v1\"")
    );
    assert_eq!(
        second.headers.get("if-modified-since").map(String::as_str),
        Some("Sat, 21 Nov 2026 08:00:00 GMT")
    );

    // The feed changes: a new item, and an edit that updates rather than re-sends.
    *version.lock().unwrap() = 2;
    let out = site.run(&["ingest"]).ok().stdout();
    assert!(
        line_for(&out, "/etag.xml").contains("1 new, 1 updated, 2 unchanged"),
        "{out}"
    );
    assert_eq!(site.sql("SELECT COUNT(*) FROM articles")[0][0], "5");
    assert_eq!(
        site.sql("SELECT title FROM articles WHERE link = 'https://news.test.example/b'")[0][0],
        "Beta (corrected)"
    );
    let third = &server.requests("/etag.xml")[2];
    assert_eq!(
        third.headers.get("if-none-match").map(String::as_str),
        Some("\"v1\"")
    );

    let status = site.run(&["status"]).ok().stdout();
    let line = line_for(&status, "/etag.xml");
    assert!(
        line.contains("next poll 20") && line.contains("ok"),
        "{status}"
    );
    assert_eq!(
        site.sql("SELECT etag FROM feeds WHERE url LIKE '%etag.xml'")[0][0],
        "\"v2\""
    );
}

#[test]
fn hostile_feeds_each_fail_alone_while_the_others_succeed() {
    let server = FeedServer::start();
    let good = rss(&[("g1", "Good one"), ("g2", "Good two"), ("g3", "Good three")]);
    server.route("/good.xml", Reply::ok("application/rss+xml", good.clone()));
    // Two slow but acceptable feeds and one slower than the timeout: fetched concurrently,
    // the run takes about as long as the timeout, not the sum of the delays.
    for path in ["/slow-ok-1.xml", "/slow-ok-2.xml"] {
        let body = rss(&[(&path[1..10], "Slow but fine")]);
        server.route(
            path,
            Reply::ok("application/rss+xml", body).delayed(Duration::from_millis(1500)),
        );
    }
    server.route(
        "/too-slow.xml",
        Reply::ok("application/rss+xml", good.clone()).delayed(Duration::from_secs(20)),
    );
    // 3 MB against a 2 MB cap, plain and as a gzip bomb (16 MB of zeros inflated).
    server.route(
        "/huge.xml",
        Reply::ok("application/rss+xml", " ".repeat(3_000_000) + &good),
    );
    server.route(
        "/gzip-bomb.xml",
        Reply::ok("application/rss+xml", gzip(&vec![b' '; 16 * 1024 * 1024]))
            .header("Content-Encoding", "gzip"),
    );
    // A compressed feed that is fine: gzip and brotli are both understood.
    server.route(
        "/gzipped.xml",
        Reply::ok(
            "application/rss+xml",
            gzip(rss(&[("gz", "Gzipped")]).as_bytes()),
        )
        .header("Content-Encoding", "gzip"),
    );
    let mut brotli = Vec::new();
    brotli::BrotliCompress(
        &mut rss(&[("br", "Brotli")]).as_bytes(),
        &mut brotli,
        &Default::default(),
    )
    .unwrap();
    server.route(
        "/brotli.xml",
        Reply::ok("application/rss+xml", brotli).header("Content-Encoding", "br"),
    );
    let laughs = std::fs::read(repo().join("tests/fixtures/feeds/billion-laughs.xml")).unwrap();
    server.route("/laughs.xml", Reply::ok("application/xml", laughs));
    let many: Vec<(String, String)> = (0..10_000)
        .map(|i| (format!("m{i}"), format!("Item {i}")))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    server.route(
        "/ten-thousand.xml",
        Reply::ok("application/rss+xml", rss(&many)),
    );
    // Latin-1 bytes with the charset only in the HTTP header.
    let mut latin = b"<rss version=\"2.0\"><channel><title>T</title><item><guid>l1</guid><link>https://news.test.example/cafe</link><title>Caf".to_vec();
    latin.extend_from_slice(&[0xE9]);
    latin.extend_from_slice(b" opens</title></item></channel></rss>");
    server.route(
        "/latin1.xml",
        Reply::ok("application/rss+xml; charset=ISO-8859-1", latin),
    );
    server.route("/moved.xml", Reply::redirect("/feeds/relative.xml"));
    server.route(
        "/feeds/relative.xml",
        Reply::ok(
            "application/rss+xml",
            "<rss version=\"2.0\"><channel><title>T</title><item><guid>r1</guid><link>stories/r1</link><title>Moved</title></item></channel></rss>",
        ),
    );
    server.route("/loop.xml", Reply::redirect("/loop.xml"));
    server.route("/broken.xml", Reply::status(500));
    server.route(
        "/busy.xml",
        Reply::status(503).header("Retry-After", "7200"),
    );

    let paths = [
        "/good.xml",
        "/slow-ok-1.xml",
        "/slow-ok-2.xml",
        "/too-slow.xml",
        "/huge.xml",
        "/gzip-bomb.xml",
        "/gzipped.xml",
        "/brotli.xml",
        "/laughs.xml",
        "/ten-thousand.xml",
        "/latin1.xml",
        "/moved.xml",
        "/loop.xml",
        "/broken.xml",
        "/busy.xml",
    ];
    let mut feeds: Vec<String> = paths.iter().map(|p| server.url(p)).collect();
    let file_feed = format!(
        "file://{}",
        repo().join("config/feeds/riverton.atom").display()
    );
    feeds.push(file_feed);
    let site = Site::new(free_port())
        .with_extra(
            "[ingest]\nallow_private = true\ntimeout = \"3s\"\nmax_body_bytes = 2000000\n\
             max_items = 50\nconcurrency = 8\nmax_redirects = 3\n",
        )
        .with_regions(&region(&feeds));

    let started = Instant::now();
    let run = site.run(&["ingest"]).failed();
    let elapsed = started.elapsed();
    let out = run.stdout();
    assert!(!run.stderr().contains("panicked"), "{}", run.stderr());
    let expect = |path: &str, text: &str| {
        let line = line_for(&out, path);
        assert!(
            line.contains(text),
            "{path}: expected {text:?} in {line:?}\n{out}"
        );
    };
    expect("/good.xml", "3 new");
    expect("/slow-ok-1.xml", "1 new");
    expect("/slow-ok-2.xml", "1 new");
    expect("/too-slow.xml", "FAILED: ");
    expect("/too-slow.xml", "did not answer within 3s (ingest.timeout)");
    expect(
        "/huge.xml",
        "is larger than the 2000000-byte limit after decompression",
    );
    expect(
        "/gzip-bomb.xml",
        "is larger than the 2000000-byte limit after decompression",
    );
    expect("/gzipped.xml", "1 new");
    expect("/brotli.xml", "1 new");
    expect("/laughs.xml", "1 new");
    expect("/ten-thousand.xml", "50 new");
    expect("/latin1.xml", "1 new");
    expect("/moved.xml", "1 new");
    expect(
        "/loop.xml",
        "redirects more than 3 times (ingest.max_redirects)",
    );
    expect("/broken.xml", "answered 500 Internal Server Error");
    expect("/busy.xml", "answered 503 Service Unavailable");
    expect("riverton.atom", "5 new");
    assert!(out.contains("6 failed"), "{out}");
    // Sequential polling would take 1.5 + 1.5 + 3 s and more; concurrent, about 3 s.
    assert!(
        elapsed < Duration::from_millis(5_500),
        "a slow feed held up the others: {elapsed:?}"
    );

    // What was stored: the laughs unexpanded, the header charset honoured, the
    // redirected feed's relative link resolved against where it was found.
    let laugh =
        &site.sql("SELECT title FROM articles WHERE link = 'https://laughs.example/story'")[0][0];
    assert_eq!(laugh, "A billion laughs: &lol9;");
    assert_eq!(
        site.sql("SELECT title FROM articles WHERE link = 'https://news.test.example/cafe'")[0][0],
        "Café opens"
    );
    let moved = server.url("/feeds/stories/r1");
    assert_eq!(
        site.sql(&format!(
            "SELECT COUNT(*) FROM articles WHERE link = '{moved}'"
        ))[0][0],
        "1"
    );
    // Failures back off (Retry-After honoured); status shows the error and the next poll.
    let retry: i64 = site
        .sql("SELECT next_poll_at - last_polled_at FROM feeds WHERE url LIKE '%busy.xml'")[0][0]
        .parse()
        .unwrap();
    assert_eq!(retry, 7200);
    let status = site.run(&["status"]).ok().stdout();
    let line = line_for(&status, "/too-slow.xml");
    assert!(
        line.contains("FAILING: ") && line.contains("next poll 20"),
        "{status}"
    );
}

#[test]
fn internal_addresses_are_refused_unless_allowed() {
    let server = FeedServer::start();
    server.route(
        "/good.xml",
        Reply::ok("application/rss+xml", rss(&[("i1", "Internal")])),
    );
    let loopback = server.url("/good.xml");
    server.route("/to-loopback.xml", Reply::redirect(&loopback));
    let file_feed = format!(
        "file://{}",
        repo().join("config/feeds/riverton.atom").display()
    );
    // `localhost` is trusted by name, so its first hop is fetched; its redirect to
    // 127.0.0.1 is not trusted and is refused before any connection is made.
    let via_trusted_name = format!("http://localhost:{}/to-loopback.xml", server.port);
    let mapped = format!("http://[::ffff:127.0.0.1]:{}/good.xml", server.port);
    let site = Site::new(free_port())
        .with_extra("[ingest]\ntrusted_hosts = [\"localhost\"]\n")
        .with_regions(&region(&[
            loopback.clone(),
            via_trusted_name.clone(),
            mapped.clone(),
            file_feed,
        ]));
    let run = site.run(&["ingest"]).failed();
    let out = run.stdout();
    let line = line_for(&out, &loopback);
    assert!(
        line.contains("FAILED: refused to fetch")
            && line.contains("127.0.0.1 is a loopback address")
            && line.contains("allow_private = true"),
        "{out}"
    );
    let line = line_for(&out, &via_trusted_name);
    assert!(
        line.contains(&format!(
            "it redirects to {loopback}, and 127.0.0.1 is a loopback address"
        )),
        "{out}"
    );
    assert!(
        line_for(&out, &mapped).contains("is a loopback address"),
        "{out}"
    );
    assert!(line_for(&out, "riverton.atom").contains("5 new"), "{out}");
    assert_eq!(
        server.requests("/to-loopback.xml").len(),
        1,
        "the trusted first hop"
    );
    assert!(
        server.requests("/good.xml").is_empty(),
        "no request reached 127.0.0.1"
    );

    // A name that resolves only to loopback is refused at resolution time.
    let by_name = format!("http://localhost:{}/good.xml", server.port);
    let site = site
        .with_extra("[ingest]\nallow_private = false\n")
        .with_regions(&region(std::slice::from_ref(&by_name)));
    let out = site.run(&["ingest"]).failed().stdout();
    assert!(
        line_for(&out, &by_name).contains("localhost resolves to")
            && line_for(&out, &by_name).contains("a loopback address"),
        "{out}"
    );
    assert!(server.requests("/good.xml").is_empty());

    // allow_private = true opens the door (development and tests).
    let site = site
        .with_extra("[ingest]\nallow_private = true\n")
        .with_regions(&region(std::slice::from_ref(&loopback)));
    let out = site.run(&["ingest"]).ok().stdout();
    assert!(line_for(&out, &loopback).contains("1 new"), "{out}");
}

#[test]
fn a_trusted_host_named_with_a_port_is_trusted_on_that_port_only() {
    let trusted = FeedServer::start();
    let other = FeedServer::start();
    for server in [&trusted, &other] {
        server.route(
            "/feed.xml",
            Reply::ok("application/rss+xml", rss(&[("p1", "Ported")])),
        );
    }
    let on_other_port = other.url("/feed.xml");
    trusted.route("/elsewhere.xml", Reply::redirect(&on_other_port));
    let feed = trusted.url("/feed.xml");
    let hop = trusted.url("/elsewhere.xml");
    let site = Site::new(free_port())
        .with_extra(&format!(
            "[ingest]\nallow_private = false\ntrusted_hosts = [\"127.0.0.1:{}\"]\n",
            trusted.port
        ))
        .with_regions(&region(&[feed.clone(), on_other_port.clone(), hop.clone()]));
    let out = site.run(&["ingest"]).failed().stdout();
    assert!(line_for(&out, &feed).contains("1 new"), "{out}");
    let refusal = format!(
        "127.0.0.1 is in [ingest] trusted_hosts for port {} only, not port {}",
        trusted.port, other.port
    );
    assert!(
        line_for(&out, &on_other_port).contains(&refusal),
        "another port of the host is not trusted:\n{out}"
    );
    assert!(
        line_for(&out, &hop).contains(&format!("it redirects to {on_other_port}, and {refusal}")),
        "{out}"
    );
    assert!(
        other.requests("/feed.xml").is_empty(),
        "no request reached the other port"
    );
}

#[test]
fn links_with_credentials_or_to_internal_hosts_are_never_stored_or_mailed() {
    let smtp = support::SmtpServer::start();
    let server = FeedServer::start();
    let items = [
        ("creds", "https://editor:hunter2@news.test.example/creds"),
        (
            "disguised",
            "https://news.test.example@evil.example/disguised",
        ),
        ("loopback", "http://127.0.0.1:8080/admin"),
        ("public-ip", "http://93.184.216.34/story"),
        ("v6", "http://[fd00::1]/story"),
        ("dotless", "http://intranet/story"),
        ("internal", "https://cms.internal/story"),
        ("relative", "/stories/relative"),
        ("public", "https://news.test.example/public"),
    ];
    let body: String = items
        .iter()
        .map(|(guid, link)| {
            format!(
                "<item><guid>{guid}</guid><link>{link}</link><title>Story {guid}</title></item>"
            )
        })
        .collect();
    server.route(
        "/feed.xml",
        Reply::ok(
            "application/rss+xml",
            format!("<rss version=\"2.0\"><channel><title>T</title>{body}</channel></rss>"),
        ),
    );
    let feed = server.url("/feed.xml");
    // The feed itself is on a trusted internal host; the links it relates to (a relative
    // one resolves to that host too) are still not for readers.
    let site = Site::new(smtp.port)
        .with_extra(&format!(
            "[ingest]\nallow_private = false\ntrusted_hosts = [\"127.0.0.1:{}\"]\n",
            server.port
        ))
        .with_regions(&region(std::slice::from_ref(&feed)));
    let out = site.run(&["ingest"]).ok().stdout();
    assert!(line_for(&out, &feed).contains("1 new"), "{out}");
    assert_eq!(
        site.sql("SELECT link FROM articles"),
        vec![vec!["https://news.test.example/public".to_string()]]
    );

    site.add_confirmed("ada@example.org", "cascadia");
    site.run(&["send", "--region", "cascadia", "--yes"]).ok();
    let messages = smtp.wait_for(1, Duration::from_secs(10));
    assert_eq!(messages.len(), 1);
    let email = support::parse_email(&messages[0].1);
    for (_, part) in &email.parts {
        assert!(part.contains("https://news.test.example/public"), "{part}");
        for (guid, link) in &items[..items.len() - 1] {
            assert!(
                !part.contains(&format!("Story {guid}")),
                "{guid} in:\n{part}"
            );
            assert!(!part.contains(link), "{link} in:\n{part}");
        }
    }
}
