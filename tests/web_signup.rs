//! Readers sign themselves up, against the real `herald daemon`, a real SQLite file and
//! a real SMTP server process: double opt-in, identical answers whatever the address's
//! state, link tokens that cannot be forged, rate limits, preferences, one-click
//! unsubscribe, and the consent record in `subscribers export`.

mod support;

use std::time::Duration;

use herald::tokens::{Purpose, Signer};
use support::web::{WebClient, csrf_of, encode, link_path, subject, text_part};
use support::{Daemon, Site, SmtpServer, parse_email};

/// The key `Site` configures (`[security] secret`), so tests can make their own tokens.
const SECRET: &[u8] = b"integration-test-secret";

/// A link token as the site's herald would issue it now: links in emails last 400 days, confirmation
/// links `signup.confirm_link_lifetime` (7 days). herald infers a link's issue time
/// from its expiry.
fn token(site: &Site, purpose: Purpose, id: i64) -> String {
    let lifetime = match purpose {
        Purpose::Confirm => 7 * 86_400,
        _ => 400 * 86_400,
    };
    Signer::new(SECRET).sign(purpose, id, site.now() + lifetime)
}

/// A link token in the format herald issued before tokens hid the reader's id:
/// `ID.EXPIRES.MAC`, the HMAC-SHA256 cut to `mac_len` bytes (20 as issued).
fn dotted_token(purpose: &str, id: i64, expires_at: i64, mac_len: usize) -> String {
    use base64::Engine;
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(format!("herald:{purpose}:{id}:{expires_at}").as_bytes());
    let mac = mac.finalize().into_bytes();
    let mac = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&mac[..mac_len]);
    format!("{id}.{expires_at}.{mac}")
}

/// `token` with one character changed, in the middle.
fn tampered(token: &str) -> String {
    let at = token.len() / 2;
    let c = if &token[at..=at] == "A" { "B" } else { "A" };
    format!("{}{c}{}", &token[..at], &token[at + 1..])
}

fn id_of(site: &Site, email: &str) -> i64 {
    site.sql(&format!(
        "SELECT id FROM subscribers WHERE email = '{email}'"
    ))[0][0]
        .parse()
        .unwrap()
}

fn state_of(site: &Site, email: &str) -> String {
    site.sql(&format!(
        "SELECT state FROM subscribers WHERE email = '{email}'"
    ))
    .first()
    .map(|r| r[0].clone())
    .unwrap_or_else(|| "absent".into())
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn feed_with(slugs: &[&str]) -> String {
    let items: String = slugs
        .iter()
        .map(|s| format!("<item><guid>{s}</guid><link>https://news.test.example/{s}</link><title>Story {s}</title></item>"))
        .collect();
    format!(
        "<?xml version=\"1.0\"?><rss version=\"2.0\"><channel><title>Town</title>{items}</channel></rss>"
    )
}

/// A site with one region, Riverton, fed from a file the test can add stories to.
fn riverton_site(smtp: &SmtpServer, extra: &str) -> (Site, std::path::PathBuf) {
    let site = Site::new(smtp.port);
    let feed = site.dir.path().join("riverton.xml");
    std::fs::write(&feed, feed_with(&["first"])).unwrap();
    let site = site
        .with_regions(&format!(
            "[[regions]]\nslug = \"riverton\"\nname = \"Riverton\"\ntimezone = \"America/Los_Angeles\"\nfeeds = [\"file://{}\"]\n",
            feed.display()
        ))
        .with_extra(extra);
    (site, feed)
}

fn to(messages: &[(String, String)], email: &str) -> Vec<String> {
    messages
        .iter()
        .filter(|(rcpt, _)| rcpt.trim() == email)
        .map(|(_, raw)| raw.clone())
        .collect()
}

#[test]
fn sign_up_confirm_send_and_one_click_unsubscribe_end_to_end() {
    let smtp = SmtpServer::start();
    let (site, feed) = riverton_site(&smtp, "");
    site.run(&["ingest"]).ok();
    site.add_confirmed("bo@example.org", "riverton");
    let daemon = Daemon::start(&site);
    let mut browser = WebClient::new(site.http_port).with_header("User-Agent", "E2E/1.0");

    // Sign up: the page says to check the inbox, and the reader is pending.
    let answer = browser.sign_up(
        "Ada@Example.org",
        &[("riverton", "daily")],
        "America/Los_Angeles",
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("Check your inbox"));
    site.wait_for_signups();
    assert_eq!(state_of(&site, "ada@example.org"), "pending");

    // The confirmation email arrives within seconds, sent by the daemon's workers.
    let messages = smtp.wait_for(1, Duration::from_secs(10));
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].0.trim(), "ada@example.org");
    assert!(subject(&messages[0].1).starts_with("Confirm your subscription"));
    let confirm = link_path(&text_part(&messages[0].1), "confirm").expect("a confirm link");

    // Following the link shows a button and changes nothing...
    let page = browser.get(&confirm);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<form method=\"post\""), "{}", page.body);
    assert_eq!(state_of(&site, "ada@example.org"), "pending");
    // ...pressing it confirms, and a welcome email follows.
    let done = browser.post(&confirm, "");
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("You are subscribed"));
    assert_eq!(state_of(&site, "ada@example.org"), "confirmed");
    let messages = smtp.wait_for(2, Duration::from_secs(10));
    assert!(subject(&messages[1].1).starts_with("You are subscribed"));

    // A manual send reaches the new reader.
    let before = smtp.messages().len();
    site.run(&["send", "--region", "riverton", "--yes"]).ok();
    let messages = smtp.wait_for(before + 2, Duration::from_secs(10));
    let digests = to(&messages[before..], "ada@example.org");
    assert_eq!(digests.len(), 1, "one digest for the new reader");
    assert!(text_part(&digests[0]).contains("Story first"));

    // One-click unsubscribe to the URL in that digest's List-Unsubscribe header.
    let header = parse_email(&digests[0])
        .header("List-Unsubscribe")
        .unwrap()
        .to_string();
    let url = header.trim_matches(['<', '>']);
    let path = &url[url.find("/unsubscribe").unwrap()..];
    let mut provider = WebClient::new(site.http_port);
    for _ in 0..2 {
        let answer = provider.post(path, "List-Unsubscribe=One-Click");
        assert_eq!(answer.status, 200, "one-click answers 200, every time");
        assert_eq!(answer.header("Set-Cookie"), None, "no cookie");
        assert_eq!(answer.header("Location"), None, "no redirect");
    }
    assert_eq!(state_of(&site, "ada@example.org"), "unsubscribed");

    // A new story: the next send skips the reader who left, and reaches the one who stayed.
    std::fs::write(&feed, feed_with(&["first", "second"])).unwrap();
    site.run(&["ingest"]).ok();
    let before = smtp.messages().len();
    site.run(&["send", "--region", "riverton", "--yes"]).ok();
    smtp.wait_for(before + 1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1_500));
    let new: Vec<String> = smtp.messages()[before..]
        .iter()
        .map(|(rcpt, _)| rcpt.trim().to_string())
        .collect();
    assert_eq!(
        new,
        ["bo@example.org"],
        "the unsubscribed reader is skipped"
    );
    daemon.stop();
}

#[test]
fn sign_up_answers_the_same_for_new_pending_confirmed_and_unsubscribed_addresses() {
    let smtp = SmtpServer::start();
    let (site, _) = riverton_site(&smtp, "");
    site.run(&[
        "subscribers",
        "add",
        "pending@example.org",
        "--region",
        "riverton",
    ])
    .ok();
    for email in ["confirmed@example.org", "gone@example.org"] {
        site.add_confirmed(email, "riverton");
    }
    let daemon = Daemon::start(&site);
    let gone = token(
        &site,
        Purpose::Unsubscribe,
        id_of(&site, "gone@example.org"),
    );
    let left = WebClient::new(site.http_port).post(
        &format!("/unsubscribe?token={gone}"),
        "List-Unsubscribe=One-Click",
    );
    assert_eq!(left.status, 200);
    assert_eq!(state_of(&site, "gone@example.org"), "unsubscribed");

    let mut answers = Vec::new();
    for email in [
        "new@example.org",
        "pending@example.org",
        "confirmed@example.org",
        "gone@example.org",
    ] {
        // Each from a browser of its own, as different people would.
        let mut browser = WebClient::new(site.http_port);
        let answer = browser.sign_up(email, &[("riverton", "weekly")], "Europe/Berlin");
        assert_eq!(
            answer.header("Set-Cookie"),
            None,
            "{email}: no cookie is set"
        );
        answers.push((email, answer.status, answer.body));
    }
    for (email, status, body) in &answers[1..] {
        assert_eq!(
            *status, answers[0].1,
            "{email}: same status as a new address"
        );
        assert_eq!(body, &answers[0].2, "{email}: same body as a new address");
    }
    assert_eq!(answers[0].1, 200);

    // What differs happens in the mailboxes: confirmations for the new, pending and
    // returning addresses, a welcome (with the preferences link) for the confirmed one.
    let messages = smtp.wait_for(4, Duration::from_secs(10));
    let subject_to = |email: &str| subject(&to(&messages, email)[0]);
    assert!(subject_to("new@example.org").starts_with("Confirm"));
    assert!(subject_to("pending@example.org").starts_with("Confirm"));
    assert!(subject_to("gone@example.org").starts_with("Confirm"));
    assert!(subject_to("confirmed@example.org").starts_with("You are subscribed"));
    assert_eq!(state_of(&site, "gone@example.org"), "pending");
    assert_eq!(state_of(&site, "confirmed@example.org"), "confirmed");
    assert_eq!(
        site.sql("SELECT cadence FROM subscriptions s JOIN subscribers r ON r.id = s.subscriber_id WHERE r.email = 'confirmed@example.org'")[0][0],
        "daily",
        "the form never changes a confirmed reader's choices"
    );
    daemon.stop();
}

#[test]
fn a_sign_up_stored_before_a_crash_is_done_at_the_next_start() {
    let smtp = SmtpServer::start();
    let (site, _) = riverton_site(&smtp, "");
    site.run(&["migrate"]).ok();
    // What the form stored just before herald was killed, its answer already sent.
    site.sql_write(&format!(
        "INSERT INTO signup_requests (email, regions, timezone, consent_ip, \
         consent_user_agent, consent_version, received_at) \
         VALUES ('late@example.org', 'riverton:weekly', 'Europe/Berlin', '203.0.113.9', \
         'Crash/1.0', '1', {})",
        site.now() - 60
    ));
    let daemon = Daemon::start(&site);
    let messages = smtp.wait_for(1, Duration::from_secs(10));
    assert_eq!(to(&messages, "late@example.org").len(), 1);
    assert!(subject(&messages[0].1).starts_with("Confirm"));
    site.wait_for_signups();
    assert_eq!(state_of(&site, "late@example.org"), "pending");
    assert_eq!(
        site.sql("SELECT s.region_slug, s.cadence, r.timezone FROM subscriptions s JOIN subscribers r ON r.id = s.subscriber_id"),
        [["riverton", "weekly", "Europe/Berlin"]]
    );
    daemon.stop();
}

#[test]
fn tampered_expired_and_wrong_purpose_tokens_get_one_error_page_and_change_nothing() {
    let smtp = SmtpServer::start();
    let (site, _) = riverton_site(&smtp, "");
    site.run(&[
        "subscribers",
        "add",
        "p@example.org",
        "--region",
        "riverton",
    ])
    .ok();
    site.add_confirmed("c@example.org", "riverton");
    let (p, c) = (id_of(&site, "p@example.org"), id_of(&site, "c@example.org"));
    let daemon = Daemon::start(&site);
    let signer = Signer::new(SECRET);
    let snapshot = || {
        (
            site.sql("SELECT email, state, timezone, confirmed_at FROM subscribers ORDER BY id"),
            site.sql("SELECT subscriber_id, region_slug, cadence FROM subscriptions ORDER BY 1, 2"),
            site.sql("SELECT COUNT(*) FROM deliveries"),
        )
    };
    let before = snapshot();

    let mut error_pages = Vec::new();
    for (path, purpose, id) in [
        ("confirm", Purpose::Confirm, p),
        ("preferences", Purpose::Preferences, c),
        ("unsubscribe", Purpose::Unsubscribe, c),
    ] {
        let good = signer.sign(purpose, id, site.now() + 3_600);
        let other = if purpose == Purpose::Confirm {
            Purpose::Unsubscribe
        } else {
            Purpose::Confirm
        };
        let bad = [
            ("tampered", tampered(&good)),
            ("expired", signer.sign(purpose, id, site.now() - 10)),
            ("wrong purpose", signer.sign(other, id, site.now() + 3_600)),
            ("garbage", "not-a-token".to_string()),
        ];
        for (what, token) in bad {
            let url = format!("/{path}?token={token}");
            let mut browser = WebClient::new(site.http_port);
            // A real form (with its CSRF token) so nothing but the link token is wrong.
            let csrf = csrf_of(&browser.get("/").body);
            for answer in [
                browser.get(&url),
                browser.post(
                    &url,
                    &format!("csrf={csrf}&intent=leave&List-Unsubscribe=One-Click"),
                ),
            ] {
                assert_eq!(answer.status, 400, "{path} {what}");
                error_pages.push((format!("{path} {what}"), answer.body));
            }
        }
    }
    for (what, body) in &error_pages {
        assert_eq!(
            body, &error_pages[0].1,
            "{what}: one and the same error page"
        );
    }
    assert!(error_pages[0].1.contains("This link is not valid"));

    // Genuine links: a GET shows a page and changes nothing (mail scanners follow GETs).
    let mut browser = WebClient::new(site.http_port);
    for url in [
        format!("/confirm?token={}", token(&site, Purpose::Confirm, p)),
        format!(
            "/unsubscribe?token={}",
            token(&site, Purpose::Unsubscribe, c)
        ),
        format!(
            "/preferences?token={}",
            token(&site, Purpose::Preferences, c)
        ),
    ] {
        let page = browser.get(&url);
        assert_eq!(page.status, 200, "{url}: {}", page.body);
        assert!(page.body.contains("<form method=\"post\""), "{url}");
    }
    assert_eq!(snapshot(), before, "nothing changed");
    daemon.stop();
}

#[test]
fn the_sixth_sign_up_from_one_ip_gets_429_and_sends_no_email() {
    let smtp = SmtpServer::start();
    let (site, _) = riverton_site(&smtp, "");
    let daemon = Daemon::start(&site);
    for i in 1..=5 {
        let answer = WebClient::new(site.http_port).sign_up(
            &format!("reader{i}@example.org"),
            &[("riverton", "daily")],
            "UTC",
        );
        assert_eq!(answer.status, 200, "sign-up {i}");
    }
    let sixth = WebClient::new(site.http_port).sign_up(
        "reader6@example.org",
        &[("riverton", "daily")],
        "UTC",
    );
    assert_eq!(sixth.status, 429);
    let retry_after: i64 = sixth
        .header("Retry-After")
        .expect("429 says when to come back")
        .parse()
        .unwrap();
    assert!((1..=3_600).contains(&retry_after), "{retry_after}");
    assert!(sixth.body.contains("try again in"), "{}", sixth.body);

    smtp.wait_for(5, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1_500));
    let messages = smtp.messages();
    assert_eq!(messages.len(), 5, "five confirmations, none for the sixth");
    assert!(to(&messages, "reader6@example.org").is_empty());
    assert_eq!(state_of(&site, "reader6@example.org"), "absent");
    daemon.stop();
}

#[test]
fn one_address_gets_at_most_three_sign_up_emails_a_day_then_429() {
    let smtp = SmtpServer::start();
    let (site, _) = riverton_site(&smtp, "[signup]\nip_limit = 100\n");
    let daemon = Daemon::start(&site);
    let statuses: Vec<u16> = (0..6)
        .map(|_| {
            WebClient::new(site.http_port)
                .sign_up("again@example.org", &[("riverton", "daily")], "UTC")
                .status
        })
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    smtp.wait_for(3, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(
        smtp.messages().len(),
        3,
        "three confirmations a day at most"
    );
    daemon.stop();
}

#[test]
fn the_form_refuses_bots_forgeries_and_oversized_posts_and_stores_nothing() {
    let smtp = SmtpServer::start();
    let (site, _) = riverton_site(&smtp, "[signup]\nip_limit = 100\n");
    let daemon = Daemon::start(&site);
    let reference = WebClient::new(site.http_port)
        .sign_up("person@example.org", &[("riverton", "daily")], "UTC")
        .body;

    let post = |browser: &mut WebClient, email: &str, csrf: &str, website: &str| {
        browser.post(
            "/subscribe",
            &encode(&[
                ("csrf".into(), csrf.into()),
                ("email".into(), email.into()),
                ("region".into(), "riverton".into()),
                ("timezone".into(), "UTC".into()),
                ("website".into(), website.into()),
            ]),
        )
    };

    // A bot fills the hidden field: it sees the usual page, nothing is stored or sent.
    let mut bot = WebClient::new(site.http_port);
    let csrf = csrf_of(&bot.get("/").body);
    let answer = post(&mut bot, "bot@example.org", &csrf, "http://spam.example");
    assert_eq!((answer.status, &answer.body), (200, &reference));
    site.wait_for_signups();
    assert_eq!(state_of(&site, "bot@example.org"), "absent");

    // Without the form's cookie, or with a token from another browser: 403.
    let mut stranger = WebClient::new(site.http_port);
    let answer = post(&mut stranger, "forged@example.org", &csrf, "");
    assert_eq!(answer.status, 403);
    // From another site, even with a valid cookie and token: 403.
    let mut browser = WebClient::new(site.http_port).with_header("Origin", "https://evil.example");
    let csrf = csrf_of(&browser.get("/").body);
    let answer = post(&mut browser, "forged@example.org", &csrf, "");
    assert_eq!(answer.status, 403);
    assert!(answer.body.contains("Sign up"), "the form is shown again");
    assert_eq!(state_of(&site, "forged@example.org"), "absent");

    // A body over the cap is refused before it is read.
    let mut browser = WebClient::new(site.http_port);
    let csrf = csrf_of(&browser.get("/").body);
    let huge = "x".repeat(20_000);
    let answer = post(&mut browser, "big@example.org", &csrf, &huge);
    assert_eq!(answer.status, 413);
    assert_eq!(state_of(&site, "big@example.org"), "absent");

    // A mistyped address: 422, the form again with the choices kept and the error named.
    let answer = post(&mut browser, "not an address", &csrf, "");
    assert_eq!(answer.status, 422);
    assert!(
        answer.body.contains("Enter an email address like"),
        "{}",
        answer.body
    );
    assert!(answer.body.contains("value=\"not an address\""));
    assert!(
        answer
            .body
            .contains("value=\"riverton\" id=\"r-riverton\" checked")
    );

    site.wait_for_signups();
    for email in ["bot", "forged", "big"] {
        assert_eq!(state_of(&site, &format!("{email}@example.org")), "absent");
    }
    smtp.wait_for(1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(
        smtp.messages().len(),
        1,
        "only the real person got an email"
    );
    daemon.stop();
}

#[test]
fn addresses_too_long_hidden_encoded_or_on_an_ip_are_refused_never_cut() {
    let smtp = SmtpServer::start();
    let (site, _) = riverton_site(&smtp, "[signup]\nip_limit = 100\n");
    let daemon = Daemon::start(&site);
    // The first 254 characters of the typed address are a valid address of their own:
    // cutting the input to fit would mail whoever owns that one.
    let label = "d".repeat(60);
    let fits = format!(
        "{}@{label}.{label}.{}.example.org",
        "a".repeat(64),
        "d".repeat(55)
    );
    assert_eq!(fits.len(), 254);
    let typed = format!("{fits}{}", "x".repeat(46));
    let cases = [
        (typed.as_str(), "longer than 254 bytes"),
        ("ad\u{202E}gro.elpmaxe@a", "invisible or text-direction"),
        ("ada\u{200B}@example.org", "invisible or text-direction"),
        ("=?utf-8?q?ada?=@example.org", "=?"),
        ("ada@127.0.0.1", "IP address"),
    ];
    for (address, reason) in cases {
        let answer =
            WebClient::new(site.http_port).sign_up(address, &[("riverton", "daily")], "UTC");
        assert_eq!(answer.status, 422, "{address:?}");
        assert!(answer.body.contains(reason), "{address:?}: {}", answer.body);
        assert!(
            answer.body.contains("Enter an email address like"),
            "the error says what to do"
        );
    }
    assert_eq!(state_of(&site, &fits), "absent", "never cut and stored");
    assert_eq!(site.sql("SELECT COUNT(*) FROM subscribers")[0][0], "0");

    // A real sign-up afterwards is the only email that goes out.
    let answer = WebClient::new(site.http_port).sign_up(
        "person@example.org",
        &[("riverton", "daily")],
        "UTC",
    );
    assert_eq!(answer.status, 200);
    smtp.wait_for(1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1_000));
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "only the valid address got an email");
    assert_eq!(messages[0].0.trim(), "person@example.org");
    daemon.stop();
}

#[test]
fn preferences_change_regions_cadences_and_zone_or_leave_all() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    site.add_confirmed("ada@example.org", "riverton");
    let id = id_of(&site, "ada@example.org");
    let daemon = Daemon::start(&site);
    let url = format!(
        "/preferences?token={}",
        token(&site, Purpose::Preferences, id)
    );
    let mut browser = WebClient::new(site.http_port);
    let page = browser.get(&url);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("ada@example.org"));
    assert!(
        page.body
            .contains("value=\"riverton\" id=\"r-riverton\" checked")
    );
    let csrf = csrf_of(&page.body);

    let form = |csrf: &str, intent: &str| {
        encode(&[
            ("csrf".into(), csrf.into()),
            ("region".into(), "cascadia".into()),
            ("cadence-cascadia".into(), "alert".into()),
            ("region".into(), "cedar-falls".into()),
            ("cadence-cedar-falls".into(), "weekly".into()),
            ("cadence-riverton".into(), "daily".into()),
            ("timezone".into(), "Asia/Kolkata".into()),
            ("intent".into(), intent.into()),
        ])
    };
    // Without the page's CSRF token nothing changes.
    let refused = WebClient::new(site.http_port).post(&url, &form(&csrf, "save"));
    assert_eq!(refused.status, 403);
    let saved = browser.post(&url, &form(&csrf, "save"));
    assert_eq!(saved.status, 200, "{}", saved.body);
    assert!(saved.body.contains("Your changes are saved"));
    assert_eq!(
        site.sql(&format!(
            "SELECT region_slug, cadence FROM subscriptions WHERE subscriber_id = {id} ORDER BY 1"
        )),
        [["cascadia", "alert"], ["cedar-falls", "weekly"]]
    );
    assert_eq!(
        site.sql("SELECT timezone FROM subscribers")[0][0],
        "Asia/Kolkata"
    );

    // Unticking everything is not how to leave: the form says so and keeps the data.
    let empty = browser.post(
        &url,
        &encode(&[
            ("csrf".into(), csrf.clone()),
            ("timezone".into(), "UTC".into()),
            ("intent".into(), "save".into()),
        ]),
    );
    assert_eq!(empty.status, 422);
    assert!(empty.body.contains("Choose at least one region"));

    let left = browser.post(
        &url,
        &encode(&[("csrf".into(), csrf), ("intent".into(), "leave".into())]),
    );
    assert_eq!(left.status, 200);
    assert!(left.body.contains("You are unsubscribed"));
    assert_eq!(state_of(&site, "ada@example.org"), "unsubscribed");
    daemon.stop();
}

#[test]
fn past_a_few_dozen_regions_the_page_offers_a_search() {
    let mut regions = String::from("[[regions]]\nslug = \"state\"\nname = \"Across the State\"\n");
    for i in 0..60 {
        regions.push_str(&format!(
            "[[regions]]\nslug = \"town-{i}\"\nname = \"Town {i}\"\nparent = \"state\"\n"
        ));
    }
    regions.push_str("[[regions]]\nslug = \"oakdale\"\nname = \"Oakdale\"\nparent = \"state\"\n");
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port).with_regions(&regions);
    let daemon = Daemon::start(&site);
    let mut browser = WebClient::new(site.http_port);

    let page = browser.get("/");
    assert!(page.body.contains("role=\"search\""), "a search form");
    assert!(!page.body.contains("Town 17"), "not the endless list");
    // Without a script: a plain GET search, answered by the server, keeping what was ticked.
    let found = browser.get("/?q=oak&region=town-3&cadence-town-3=weekly");
    assert!(
        found.body.contains("value=\"oakdale\" id=\"r-oakdale\">"),
        "{}",
        found.body
    );
    assert!(
        found
            .body
            .contains("value=\"town-3\" id=\"r-town-3\" checked")
    );
    assert!(found.body.contains("1 community found."));
    // With a script: JSON as the reader types, best match first.
    let json = browser.get("/regions?q=town%201");
    let answer: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    let names: Vec<&str> = answer["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names[..3], ["Town 1", "Town 10", "Town 11"]);
    assert_eq!(answer["regions"][0]["context"], "Across the State");

    let answer = browser.sign_up("town@example.org", &[("oakdale", "alert")], "UTC");
    assert_eq!(answer.status, 200);
    site.wait_for_signups();
    assert_eq!(
        site.sql("SELECT region_slug, cadence FROM subscriptions")[0],
        ["oakdale", "alert"]
    );
    daemon.stop();
}

#[test]
fn export_carries_the_consent_record_and_remove_keeps_only_a_hash() {
    let smtp = SmtpServer::start();
    let (site, _) = riverton_site(&smtp, "[signup]\nconsent_version = \"2026-11\"\n");
    let daemon = Daemon::start(&site);
    let mut browser =
        WebClient::new(site.http_port).with_header("User-Agent", "ConsentBrowser/2.0");
    assert_eq!(
        browser
            .sign_up("ada@example.org", &[("riverton", "daily")], "UTC")
            .status,
        200
    );
    let messages = smtp.wait_for(1, Duration::from_secs(10));
    let confirm = link_path(&text_part(&messages[0].1), "confirm").unwrap();
    assert_eq!(browser.post(&confirm, "").status, 200);
    smtp.wait_for(2, Duration::from_secs(10));
    daemon.stop();

    let export = site.run(&["subscribers", "export"]).ok().stdout();
    let mut lines = export.lines();
    assert_eq!(
        lines.next().unwrap(),
        "email,regions,cadence,timezone,state,created_at,confirmed_at,consent_given_at,consent_ip,consent_user_agent,consent_version,consent_confirmed_at,consent_confirmed_ip"
    );
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(row[0], "ada@example.org");
    assert_eq!(row[4], "confirmed");
    assert!(row[7].ends_with('Z'), "consent time: {row:?}");
    assert_eq!(row[8], "127.0.0.1");
    assert_eq!(row[9], "ConsentBrowser/2.0");
    assert_eq!(row[10], "2026-11");
    assert!(row[11].ends_with('Z'), "confirmation time: {row:?}");
    assert_eq!(row[12], "127.0.0.1");

    site.run(&["subscribers", "remove", "ada@example.org"]).ok();
    let export = site.run(&["subscribers", "export"]).ok().stdout();
    assert_eq!(export.lines().count(), 1, "only the header is left");
    for table in ["subscribers", "subscriptions", "consents"] {
        assert_eq!(
            site.sql(&format!("SELECT COUNT(*) FROM {table}"))[0][0],
            "0",
            "{table} is erased"
        );
    }
    let suppressed = site.sql("SELECT email_hash FROM suppressions");
    assert_eq!(suppressed.len(), 1);
    assert_eq!(suppressed[0][0].len(), 64, "a hash, not the address");
    assert_ne!(
        suppressed[0][0],
        sha256_hex("ada@example.org"),
        "keyed: no dictionary of addresses reverses it"
    );
    let dump = site.sql("SELECT group_concat(ip || user_agent) FROM consents");
    assert_eq!(dump[0][0], "");

    // Signing up again is quietly refused: the address stays suppressed.
    let daemon = Daemon::start(&site);
    let answer =
        WebClient::new(site.http_port).sign_up("ada@example.org", &[("riverton", "daily")], "UTC");
    assert_eq!(answer.status, 200);
    site.wait_for_signups();
    assert_eq!(state_of(&site, "ada@example.org"), "absent");
    daemon.stop();
}

/// The export's rows as Python's `csv` module reads them (what a spreadsheet import
/// sees), one map of column to cell per reader.
fn python_csv_rows(export: &str) -> Vec<std::collections::HashMap<String, String>> {
    use std::io::Write;
    let mut python = std::process::Command::new("python3")
        .arg("-c")
        .arg("import csv,sys,json; print(json.dumps(list(csv.DictReader(sys.stdin))))")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    python
        .stdin
        .take()
        .unwrap()
        .write_all(export.as_bytes())
        .unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn export_cells_that_would_run_as_formulas_open_as_text() {
    let smtp = SmtpServer::start();
    let (site, _) = riverton_site(&smtp, "");
    let daemon = Daemon::start(&site);
    let mut browser =
        WebClient::new(site.http_port).with_header("User-Agent", "=HYPERLINK(\"http://x\")");
    for email in ["ada@example.org", "=1+2@example.org"] {
        let answer = browser.sign_up(email, &[("riverton", "daily")], "UTC");
        assert_eq!(answer.status, 200, "{email}");
    }
    daemon.stop();

    let export = site.run(&["subscribers", "export"]).ok().stdout();
    let rows = python_csv_rows(&export);
    assert_eq!(rows.len(), 2, "{export}");
    for row in &rows {
        assert_eq!(
            row["consent_user_agent"], "'=HYPERLINK(\"http://x\")",
            "the browser's User-Agent opens as text: {row:?}"
        );
    }
    let mut emails: Vec<&str> = rows.iter().map(|r| r["email"].as_str()).collect();
    emails.sort();
    assert_eq!(emails, ["'=1+2@example.org", "ada@example.org"]);

    // Imported again, the export gives back the addresses as they signed up.
    let file = site.dir.path().join("export.csv");
    std::fs::write(&file, &export).unwrap();
    let copy = Site::new(smtp.port).with_regions(&format!(
        "[[regions]]\nslug = \"riverton\"\nname = \"Riverton\"\ntimezone = \"America/Los_Angeles\"\nfeeds = [\"file://{}\"]\n",
        site.dir.path().join("riverton.xml").display()
    ));
    copy.run(&["subscribers", "import", file.to_str().unwrap()])
        .ok();
    let mut imported: Vec<String> = copy
        .sql("SELECT email FROM subscribers")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    imported.sort();
    assert_eq!(imported, ["=1+2@example.org", "ada@example.org"]);
}

#[test]
fn addresses_an_older_herald_erased_are_re_keyed_and_stay_refused() {
    let smtp = SmtpServer::start();
    let (site, _) = riverton_site(&smtp, "");
    site.run(&["migrate"]).ok();
    // The database as the release before keyed entries left it: an erased address kept
    // as its bare SHA-256.
    for statement in [
        "DROP INDEX suppressions_unkeyed",
        "ALTER TABLE suppressions DROP COLUMN hash_scheme",
        "DELETE FROM _sqlx_migrations WHERE version = 11",
    ] {
        site.sql_write(statement);
    }
    site.sql_write(&format!(
        "INSERT INTO suppressions (email_hash, reason, created_at) VALUES ('{}', 'removed', 1)",
        sha256_hex("old@example.org")
    ));

    let daemon = Daemon::start(&site);
    let rows = site.sql("SELECT email_hash, hash_scheme, reason FROM suppressions");
    assert_eq!(rows.len(), 1);
    assert_ne!(rows[0][0], sha256_hex("old@example.org"), "re-keyed");
    assert_eq!(rows[0][1..], ["hmac-sha256", "removed"]);
    let answer =
        WebClient::new(site.http_port).sign_up("Old@Example.org", &[("riverton", "daily")], "UTC");
    assert_eq!(answer.status, 200);
    site.wait_for_signups();
    assert_eq!(state_of(&site, "old@example.org"), "absent");
    daemon.stop();
    assert!(smtp.messages().is_empty(), "nothing is sent to it");
}

#[test]
fn links_in_emails_sent_before_tokens_changed_work_as_issued_and_only_so() {
    let smtp = SmtpServer::start();
    let (site, _) = riverton_site(&smtp, "");
    site.add_confirmed("ada@example.org", "riverton");
    let ada = id_of(&site, "ada@example.org");
    // Ada signed up two months ago; last month's digest carried her links, valid 400 days.
    site.sql_write("UPDATE subscribers SET created_at = created_at - 60 * 86400");
    let expires = site.now() - 30 * 86_400 + 400 * 86_400;
    let daemon = Daemon::start(&site);
    let mut browser = WebClient::new(site.http_port);

    let page = browser.get(&format!(
        "/preferences?token={}",
        dotted_token("preferences", ada, expires, 20)
    ));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("ada@example.org"));

    // Spellings herald never issued are refused, and change nothing.
    let issued = dotted_token("unsubscribe", ada, expires, 20);
    let mac = issued.rsplit('.').next().unwrap();
    for forged in [
        dotted_token("unsubscribe", ada, expires, 16),
        format!("0{ada}.{expires}.{mac}"),
        format!("%2B{ada}.{expires}.{mac}"),
        format!("{ada}.0{expires}.{mac}"),
    ] {
        let click = browser.post(
            &format!("/unsubscribe?token={forged}"),
            "List-Unsubscribe=One-Click",
        );
        assert_eq!(click.status, 400, "{forged}");
    }
    assert_eq!(state_of(&site, "ada@example.org"), "confirmed");

    // The one-click link in that digest unsubscribes her.
    let click = browser.post(
        &format!("/unsubscribe?token={issued}"),
        "List-Unsubscribe=One-Click",
    );
    assert_eq!(click.status, 200);
    assert_eq!(state_of(&site, "ada@example.org"), "unsubscribed");
    daemon.stop();
}

#[test]
fn a_link_sent_to_an_erased_reader_never_reaches_the_next_owner_of_its_id() {
    let smtp = SmtpServer::start();
    let (site, _) = riverton_site(&smtp, "");
    let add = |email: &str| {
        site.add_confirmed(email, "riverton");
    };
    add("old@example.org");
    let old = id_of(&site, "old@example.org");
    site.run(&["subscribers", "remove", "old@example.org"]).ok();
    add("new@example.org");
    let new = id_of(&site, "new@example.org");
    assert_eq!(
        old, new,
        "SQLite gives the highest id again after it was deleted"
    );

    // Links the erased reader got in an email a while ago (unexpired).
    let signer = Signer::new(SECRET);
    let issued = site.now() - 3_600;
    let year = 400 * 86_400;
    let stale = |purpose| signer.sign(purpose, old, issued + year);
    let daemon = Daemon::start(&site);
    let mut browser = WebClient::new(site.http_port);
    let page = browser.get(&format!(
        "/preferences?token={}",
        stale(Purpose::Preferences)
    ));
    assert_eq!(
        page.status, 400,
        "the new reader's preferences stay private"
    );
    assert!(!page.body.contains("new@example.org"));
    let page = browser.get(&format!(
        "/unsubscribe?token={}",
        stale(Purpose::Unsubscribe)
    ));
    assert_eq!(page.status, 400);
    let click = browser.post(
        &format!("/unsubscribe?token={}", stale(Purpose::Unsubscribe)),
        "List-Unsubscribe=One-Click",
    );
    assert_eq!(click.status, 200, "one-click still answers 200...");
    assert_eq!(
        state_of(&site, "new@example.org"),
        "confirmed",
        "...but the new reader stays subscribed"
    );
    // Links made for the new reader work.
    let page = browser.get(&format!(
        "/preferences?token={}",
        token(&site, Purpose::Preferences, new)
    ));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("new@example.org"));
    daemon.stop();
}
