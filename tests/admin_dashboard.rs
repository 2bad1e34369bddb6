//! The admin dashboard over HTTP against the real daemon and aiosmtpd: logging in with
//! an admin token, the session cookie's attributes, every page behind the session,
//! forms refused without their CSRF token, a revoked token's session ending, and a
//! dry run confirmed into a send that reaches every reader. Every site's clock is
//! pinned by `tests/support`.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::web::{Answer, WebClient, csrf_of, encode};
use support::{Daemon, Site, SmtpServer};

/// Every page behind the login.
const PAGES: [&str; 8] = [
    "/admin",
    "/admin/sponsors",
    "/admin/sends",
    "/admin/sends/new",
    "/admin/readers?email=reader00%40example.org",
    "/admin/failures",
    "/admin/feeds",
    "/admin/sends/1/progress",
];

/// A site with `readers` confirmed daily readers of Riverton, its feeds ingested, and
/// an admin token; returns the site and the token.
fn site_with_readers(site: Site, readers: usize) -> (Site, String) {
    site.run(&["ingest"]).ok();
    for i in 0..readers {
        site.add_confirmed(&format!("reader{i:02}@example.org"), "riverton");
    }
    let token = site
        .run(&["admin", "token", "create", "desk"])
        .ok()
        .stdout();
    (site, token.trim().to_string())
}

fn form(pairs: &[(&str, &str)]) -> String {
    encode(
        &pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>(),
    )
}

/// Opens the login page and posts `token` with the page's CSRF token.
fn log_in(client: &mut WebClient, token: &str) -> Answer {
    let page = client.get("/admin/login");
    assert_eq!(page.status, 200, "{}", page.body);
    client.post(
        "/admin/login",
        &form(&[("csrf", &csrf_of(&page.body)), ("token", token)]),
    )
}

fn assert_to_login(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 303, "{what}: {}", answer.body);
    assert_eq!(
        answer.header("location").as_deref(),
        Some("/admin/login"),
        "{what}"
    );
}

fn session_cookie(answer: &Answer) -> String {
    answer
        .head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.trim().to_string())
        .find(|v| v.starts_with("herald_admin="))
        .unwrap_or_else(|| panic!("no session cookie in\n{}", answer.head))
}

#[test]
fn only_a_live_token_opens_the_pages_and_forms_need_their_csrf_token() {
    let smtp = SmtpServer::start();
    let (site, token) = site_with_readers(Site::new(smtp.port), 1);
    let leaving = site
        .run(&["admin", "token", "create", "leaving"])
        .ok()
        .stdout();
    let daemon = Daemon::start(&site);
    let mut client = WebClient::new(site.http_port);

    // Without a session every page sends the browser to the login page.
    for path in PAGES {
        assert_to_login(&client.get(path), path);
    }
    let erase = form(&[("email", "reader00@example.org")]);
    assert_to_login(&client.post("/admin/readers/erase", &erase), "erase");

    // A wrong token is refused, and no session is opened.
    let wrong = log_in(&mut client, "herald_not-a-real-token");
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.body.contains("not valid"), "{}", wrong.body);
    assert!(!wrong.head.contains("herald_admin="), "{}", wrong.head);
    assert_to_login(&client.get("/admin"), "after a wrong token");
    // The login form itself needs its CSRF token.
    let bare = client.post("/admin/login", &form(&[("token", &token)]));
    assert_eq!(bare.status, 403, "{}", bare.body);

    // The right token opens a session: HttpOnly, SameSite=Strict, only under /admin,
    // not Secure on a plain-http site.
    let ok = log_in(&mut client, &token);
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(ok.header("location").as_deref(), Some("/admin"));
    let cookie = session_cookie(&ok);
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age="] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(
        !cookie.contains(&token),
        "the token itself is not in the cookie"
    );
    for path in PAGES {
        let page = client.get(path);
        // No send 1 yet: past the session check, the progress route says so.
        let expected = if path.ends_with("/progress") {
            404
        } else {
            200
        };
        assert_eq!(page.status, expected, "{path}: {}", page.body);
    }
    let queue = client.get("/admin");
    assert!(queue.body.contains("name=\"viewport\""), "{}", queue.body);
    assert!(
        queue
            .header("content-security-policy")
            .is_some_and(|csp| csp.contains("default-src 'none'")),
        "{}",
        queue.head
    );

    // A form without its CSRF token changes nothing, nor one from another site.
    let refused = client.post("/admin/readers/erase", &erase);
    assert_eq!(refused.status, 403, "{}", refused.body);
    let mut foreign = WebClient::new(site.http_port).with_header("Origin", "https://evil.example");
    let page = foreign.get("/admin/login");
    let cross = foreign.post(
        "/admin/login",
        &form(&[("csrf", &csrf_of(&page.body)), ("token", &token)]),
    );
    assert_eq!(
        cross.status, 403,
        "a login posted from another site: {}",
        cross.body
    );
    for (path, body) in [
        (
            "/admin/sends",
            form(&[("region", "riverton"), ("cadence", "daily")]),
        ),
        ("/admin/failures/retry", String::new()),
        (
            "/admin/readers/lift",
            form(&[("email", "reader00@example.org")]),
        ),
        ("/admin/logout", String::new()),
    ] {
        let answer = client.post(path, &body);
        assert_eq!(answer.status, 403, "{path}: {}", answer.body);
    }
    assert_eq!(
        site.sql("SELECT COUNT(*) FROM subscribers")[0][0],
        "1",
        "nothing was erased"
    );
    assert_eq!(site.sql("SELECT COUNT(*) FROM sends")[0][0], "0");

    // With its token the form works; what the page shows is escaped.
    let page = client.get("/admin/sends/new");
    let hostile = client.post(
        "/admin/sends",
        &form(&[
            ("csrf", &csrf_of(&page.body)),
            ("region", "<script>x</script>"),
            ("cadence", "daily"),
        ]),
    );
    assert_eq!(hostile.status, 422, "{}", hostile.body);
    assert!(!hostile.body.contains("<script>x"), "{}", hostile.body);
    let page = client.get("/admin/readers?email=reader00%40example.org");
    let erased = client.post(
        "/admin/readers/erase",
        &form(&[
            ("csrf", &csrf_of(&page.body)),
            ("email", "reader00@example.org"),
        ]),
    );
    assert_eq!(erased.status, 200, "{}", erased.body);
    assert!(erased.body.contains("was erased"), "{}", erased.body);
    assert_eq!(site.sql("SELECT COUNT(*) FROM subscribers")[0][0], "0");
    let lifted = client.post(
        "/admin/readers/lift",
        &form(&[
            ("csrf", &csrf_of(&erased.body)),
            ("email", "reader00@example.org"),
        ]),
    );
    assert!(
        lifted.body.contains("no longer suppressed"),
        "{}",
        lifted.body
    );

    // Logging out clears the session.
    let page = client.get("/admin");
    let out = client.post("/admin/logout", &form(&[("csrf", &csrf_of(&page.body))]));
    assert_to_login(&out, "logout");
    assert!(session_cookie(&out).contains("Max-Age=0"), "{}", out.head);
    assert_to_login(&client.get("/admin"), "after logging out");

    // A revoked token's session stops working at once.
    let mut other = WebClient::new(site.http_port);
    assert_eq!(log_in(&mut other, leaving.trim()).status, 303);
    assert_eq!(other.get("/admin").status, 200);
    site.run(&["admin", "token", "revoke", "leaving"]).ok();
    assert_to_login(&other.get("/admin"), "after the token was revoked");
    daemon.stop();
}

#[test]
fn the_session_cookie_is_secure_behind_https() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port).with_public_url("https://news.example.org");
    let (site, token) = site_with_readers(site, 0);
    let daemon = Daemon::start(&site);
    let mut client = WebClient::new(site.http_port);
    let ok = log_in(&mut client, &token);
    assert_eq!(ok.status, 303, "{}", ok.body);
    let cookie = session_cookie(&ok);
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    daemon.stop();
}

#[test]
fn a_dry_run_confirmed_from_the_form_reaches_every_reader() {
    let smtp = SmtpServer::start();
    let (site, token) = site_with_readers(Site::new(smtp.port), 3);
    let daemon = Daemon::start(&site);
    let mut client = WebClient::new(site.http_port);
    assert_eq!(log_in(&mut client, &token).status, 303);

    let page = client.get("/admin/sends/new");
    let dry = client.post(
        "/admin/sends",
        &form(&[
            ("csrf", &csrf_of(&page.body)),
            ("region", "riverton"),
            ("cadence", "daily"),
            ("to", ""),
        ]),
    );
    assert_eq!(dry.status, 303, "{}", dry.body);
    let dry_page = client.get(&dry.header("location").unwrap());
    assert_eq!(dry_page.status, 200);
    assert!(
        dry_page
            .body
            .contains("<strong id=\"dry-readers\">3</strong>"),
        "{}",
        dry_page.body
    );
    assert!(
        dry_page.body.contains("America/Los_Angeles"),
        "{}",
        dry_page.body
    );
    // The sample is framed with every sandbox restriction, its HTML escaped into srcdoc.
    assert!(
        dry_page.body.contains(
            "<iframe class=\"sample\" title=\"The rendered sample email\" sandbox srcdoc=\"&lt;"
        ),
        "{}",
        dry_page.body
    );
    assert_eq!(smtp.messages().len(), 0, "a dry run sends nothing");

    let action = {
        let at = dry_page.body.find("/confirm\"").expect("a confirm form");
        let start = dry_page.body[..at].rfind('"').unwrap() + 1;
        format!("{}/confirm", &dry_page.body[start..at])
    };
    let csrf = csrf_of(&dry_page.body);
    let confirmed = client.post(&action, &form(&[("csrf", &csrf)]));
    assert_eq!(confirmed.status, 303, "{}", confirmed.body);
    let send_path = confirmed.header("location").unwrap();
    // Confirming the same dry run again finds the same send.
    let again = client.post(&action, &form(&[("csrf", &csrf)]));
    assert_eq!(again.header("location"), Some(send_path.clone()));
    let page = client.get(&send_path);
    assert!(page.body.contains("<progress"), "{}", page.body);
    assert!(page.body.contains("http-equiv=\"refresh\"") || page.body.contains("done"));

    let start = Instant::now();
    let progress = loop {
        let answer = client.get(&format!("{send_path}/progress"));
        let progress: Value = serde_json::from_str(&answer.body).unwrap();
        if progress["over"] == true {
            break progress;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{progress}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(progress["state"], "done", "{progress}");
    assert_eq!(progress["total"], 3);
    assert_eq!(progress["finished"], 3);
    assert_eq!(progress["counts"]["sent"], 3);
    assert_eq!(smtp.wait_for(3, Duration::from_secs(10)).len(), 3);
    assert_eq!(
        site.sql("SELECT COUNT(*) FROM sends WHERE dry_run = 0")[0][0],
        "1"
    );
    daemon.stop();
}

#[test]
fn a_sponsor_is_booked_refused_and_removed_from_the_form() {
    let smtp = SmtpServer::start();
    let (site, token) = site_with_readers(Site::new(smtp.port), 1);
    let daemon = Daemon::start(&site);
    let mut client = WebClient::new(site.http_port);
    assert_eq!(log_in(&mut client, &token).status, 303);
    let page = client.get("/admin/sponsors");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("No bookings."), "{}", page.body);
    let fields = |csrf: &str, link: &str| {
        form(&[
            ("csrf", csrf),
            ("regions", "riverton"),
            ("from", "2027-01-13"),
            ("to", "2027-01-14"),
            ("label", "Sponsored by <script>x()</script> Hardware"),
            ("headline", "Winter sale"),
            ("body", ""),
            ("link", link),
            ("image", ""),
            ("alt", ""),
        ])
    };
    // Without its CSRF token the form changes nothing.
    let forged = client.post("/admin/sponsors", &fields("", "https://hardware.example/"));
    assert_eq!(forged.status, 403);
    // A bad link is refused with a sentence, the form kept as typed.
    let refused = client.post(
        "/admin/sponsors",
        &fields(&csrf_of(&page.body), "http://hardware.example/"),
    );
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body.contains("is not an https:// address"),
        "{}",
        refused.body
    );
    assert!(
        refused.body.contains("value=\"Winter sale\""),
        "{}",
        refused.body
    );
    let booked = client.post(
        "/admin/sponsors",
        &fields(&csrf_of(&refused.body), "https://hardware.example/"),
    );
    assert_eq!(booked.status, 200, "{}", booked.body);
    assert!(booked.body.contains("Booked sponsor 1."), "{}", booked.body);
    assert!(
        booked
            .body
            .contains("Sponsored by &lt;script&gt;x()&lt;/script&gt; Hardware"),
        "{}",
        booked.body
    );
    assert!(!booked.body.contains("<script>x()"));
    let list = site.run(&["sponsors", "list"]).ok().stdout();
    assert!(list.contains("1 booking(s)"), "{list}");
    let removed = client.post(
        "/admin/sponsors/remove",
        &form(&[("csrf", &csrf_of(&booked.body)), ("id", "1")]),
    );
    assert!(
        removed.body.contains("Removed sponsor 1."),
        "{}",
        removed.body
    );
    assert!(
        site.run(&["sponsors", "list"])
            .ok()
            .stdout()
            .contains("0 booking(s)")
    );
    daemon.stop();
}
