//! The push API: a newsroom CMS posts articles with a bearer token made by
//! `herald admin token create`; bad requests get a 4xx with a JSON sentence.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::{Daemon, Site, free_port, request};

const PATH: &str = "/admin/api/articles";

fn post(site: &Site, token: Option<&str>, body: &str) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    let (status, _, body) = request(site.http_port, "POST", PATH, &headers, body).unwrap();
    (status, body)
}

/// Two regions and no feeds: every article in the database came through the API.
fn site() -> Site {
    Site::new(free_port()).with_regions(
        r#"
[[regions]]
slug = "cascadia"
name = "Across Cascadia"

[[regions]]
slug = "riverton"
name = "Riverton"
parent = "cascadia"
"#,
    )
}

fn error_of(body: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {body}"))
        .to_string()
}

#[test]
fn a_pushed_breaking_article_is_stored_for_alerts_and_bad_requests_get_json_errors() {
    let site = site();
    let created = site.run(&["admin", "token", "create", "newsroom-cms"]).ok();
    let token = created.stdout().trim().to_string();
    assert!(token.starts_with("herald_"), "{token}");
    assert!(
        created.stderr().contains("not shown again"),
        "{}",
        created.stderr()
    );
    // Only the hash is stored.
    let stored = site.sql("SELECT name, token_hash FROM api_tokens");
    assert_eq!(stored[0][0], "newsroom-cms");
    assert!(!stored[0][1].contains(&token[7..]));
    site.run(&["admin", "token", "create", "newsroom-cms"])
        .failed();

    let daemon = Daemon::start(&site);
    let article = r#"{"region": "riverton", "title": "River Road <b>closed</b> by flooding",
        "url": "https://news.test.example/flood", "summary": "<p>Crews expect it to reopen Sunday.</p>",
        "breaking": true, "published_at": "2026-11-21T08:00:00Z"}"#;

    // No token, a wrong token: 401 with a sentence, nothing stored.
    let (status, body) = post(&site, None, article);
    assert_eq!(status, 401, "{body}");
    assert!(error_of(&body).contains("Authorization: Bearer"), "{body}");
    let (status, body) = post(&site, Some("herald_not-a-real-token"), article);
    assert_eq!(status, 401, "{body}");
    assert!(error_of(&body).contains("not valid"), "{body}");

    // Bad JSON, unknown fields, an unknown region, a bad or unmailable URL, an oversized body.
    let cases = [
        ("{\"region\": ", 400, "not a valid article"),
        (
            r#"{"region": "riverton", "title": "T", "url": "https://x.example/a", "colour": "red"}"#,
            400,
            "unknown field `colour`",
        ),
        (
            r#"{"region": "atlantis", "title": "T", "url": "https://x.example/a"}"#,
            422,
            "unknown region \"atlantis\"",
        ),
        (
            r#"{"region": "riverton", "title": "T", "url": "javascript:alert(1)"}"#,
            422,
            "not an absolute http(s) address",
        ),
        (
            r#"{"region": "riverton", "title": "T", "url": "https://editor:pw@x.example/a"}"#,
            422,
            "carries a user name or password",
        ),
        (
            r#"{"region": "riverton", "title": "T", "url": "http://10.0.0.7/a"}"#,
            422,
            "its host is an IP address",
        ),
        (
            r#"{"region": "riverton", "title": "T", "url": "https://cms.internal/a"}"#,
            422,
            "cms.internal is an internal name",
        ),
        (
            r#"{"region": "riverton", "title": "T", "url": "https://x.example/a", "published_at": "last Tuesday"}"#,
            422,
            "RFC 3339",
        ),
    ];
    for (body, want, message) in cases {
        let (status, answer) = post(&site, Some(&token), body);
        assert_eq!(status, want, "{body} -> {answer}");
        assert!(error_of(&answer).contains(message), "{body} -> {answer}");
    }
    let huge = format!(
        r#"{{"region": "riverton", "title": "T", "url": "https://x.example/a", "summary": "{}"}}"#,
        "x".repeat(200_000)
    );
    let (status, answer) = post(&site, Some(&token), &huge);
    assert_eq!(status, 413, "{answer}");
    assert!(error_of(&answer).contains("larger than"), "{answer}");
    assert_eq!(site.sql("SELECT COUNT(*) FROM articles")[0][0], "0");

    // A good push: 201, stored as breaking, text sanitised; the same push again changes nothing.
    let (status, body) = post(&site, Some(&token), article);
    assert_eq!(status, 201, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["status"], "created");
    assert_eq!(answer["breaking"], true);
    let row = site.sql(
        "SELECT a.title, a.summary, a.breaking, a.published_at, r.region_slug
         FROM articles a JOIN article_regions r ON r.article_id = a.id",
    );
    assert_eq!(
        row,
        vec![vec![
            "River Road closed by flooding".to_string(),
            "Crews expect it to reopen Sunday.".to_string(),
            "1".to_string(),
            "1795248000".to_string(),
            "riverton".to_string()
        ]]
    );
    let (status, body) = post(&site, Some(&token), article);
    assert_eq!(
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"].clone()
        ),
        (200, "unchanged".into())
    );

    // An alert category makes an article breaking without the flag.
    let (status, body) = post(
        &site,
        Some(&token),
        r#"{"region": "cascadia", "title": "Storm warning", "url": "https://news.test.example/storm", "category": "Breaking"}"#,
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        site.sql("SELECT breaking FROM articles WHERE link = 'https://news.test.example/storm'")[0]
            [0],
        "1"
    );
    // An edit under the same URL updates the article instead of adding one.
    let (status, body) = post(
        &site,
        Some(&token),
        r#"{"region": "cascadia", "title": "Storm warning extended", "url": "https://news.test.example/storm"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"updated\""), "{body}");
    assert_eq!(site.sql("SELECT COUNT(*) FROM articles")[0][0], "2");

    daemon.stop();
    let status = site.run(&["status"]).ok().stdout();
    assert!(
        status.contains("articles: 2 stored, 2 breaking"),
        "{status}"
    );
    let list = site.run(&["admin", "token", "list"]).ok().stdout();
    assert!(list.contains("newsroom-cms"), "{list}");
    assert!(!list.contains("last used never"), "{list}");

    // A revoked token opens nothing.
    site.run(&["admin", "token", "revoke", "newsroom-cms"]).ok();
    site.run(&["admin", "token", "revoke", "newsroom-cms"])
        .failed();
    let daemon = Daemon::start(&site);
    assert_eq!(post(&site, Some(&token), article).0, 401);
    daemon.stop();
}

/// The token is checked before the body is read: a request that announces a large body
/// and sends none is answered at once, and so is one whose announced length is over the cap.
#[test]
fn the_token_is_checked_before_the_body_is_read() {
    let site = site();
    let token = site
        .run(&["admin", "token", "create", "cms"])
        .ok()
        .stdout()
        .trim()
        .to_string();
    let daemon = Daemon::start(&site);
    let answer_without_body = |extra: &str| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", site.http_port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: 60000\r\n{extra}\r\n{{\"region\""
        )
        .unwrap();
        let mut buf = [0u8; 1024];
        let n = stream
            .read(&mut buf)
            .expect("herald waited for a body it should not read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let head = answer_without_body("");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let head = answer_without_body("Authorization: Bearer wrong\r\n");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    // With a valid token, an announced length over the cap is refused unread too.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", site.http_port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 10000000\r\n\r\n{{"
    )
    .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    daemon.stop();
}

#[test]
fn a_pushed_breaking_article_becomes_an_alert_email_at_a_real_smtp_server() {
    let smtp = support::SmtpServer::start();
    let site = Site::new(smtp.port)
        .with_extra("[alerts]\nquiet_hours = \"\"\n\n[schedule]\ntick = \"200ms\"\n")
        .with_regions(
            r#"
[[regions]]
slug = "riverton"
name = "Riverton"
"#,
        );
    let token = site
        .run(&["admin", "token", "create", "cms"])
        .ok()
        .stdout()
        .trim()
        .to_string();
    site.run(&[
        "subscribers",
        "add",
        "alerts@example.org",
        "--region",
        "riverton",
        "--cadence",
        "alert",
        "--confirmed",
    ])
    .ok();
    site.add_confirmed("daily@example.org", "riverton");
    let daemon = Daemon::start(&site);
    let (status, body) = post(
        &site,
        Some(&token),
        r#"{"region": "riverton", "title": "Levee breach on the east bank", "url": "https://news.test.example/levee", "summary": "Evacuations are under way.", "breaking": true}"#,
    );
    assert!(status == 200 || status == 201, "{status} {body}");
    let messages = smtp.wait_for(1, Duration::from_secs(20));
    daemon.stop();
    assert_eq!(messages.len(), 1, "one alert, to the alert reader only");
    assert_eq!(messages[0].0.trim(), "alerts@example.org");
    let email = support::parse_email(&messages[0].1);
    let subject = email.header("Subject").unwrap();
    assert!(
        subject.contains("alert") && subject.contains("Levee breach"),
        "{subject}"
    );
    assert!(email.parts[0].1.contains("https://news.test.example/levee"));
    let rows = site.sql("SELECT kind, state FROM deliveries");
    assert_eq!(rows, vec![vec!["alert".to_string(), "sent".to_string()]]);
}
