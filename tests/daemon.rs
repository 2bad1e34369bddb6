//! `herald daemon`: serves health checks, ingests on start, honours one-click
//! unsubscribe, and exits 0 on SIGTERM.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Site, SmtpServer, http, parse_email, wait_http};

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn daemon_serves_health_ingests_and_stops_cleanly_on_sigterm() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    let mut daemon = site
        .command(&["daemon"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_http(site.http_port, "/healthz", Duration::from_secs(20)),
        "daemon did not come up"
    );
    assert_eq!(http(site.http_port, "GET", "/readyz", "").unwrap().0, 200);

    // It ingests on start.
    let start = Instant::now();
    while site.sql("SELECT COUNT(*) FROM articles")[0][0] != "15"
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    // 16 feed items, one story shared by two feeds: 15 articles.
    assert_eq!(site.sql("SELECT COUNT(*) FROM articles")[0][0], "15");

    signal(daemon.id(), "TERM");
    let status =
        wait_exit(&mut daemon, Duration::from_secs(15)).expect("daemon did not stop on SIGTERM");
    assert!(status.success(), "daemon exit status {status:?}");
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

#[test]
fn one_click_unsubscribe_from_the_digest_header_stops_the_next_send() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    let feed = site.dir.path().join("town.xml");
    std::fs::write(&feed, feed_with(&["first"])).unwrap();
    let site = site.with_regions(&format!(
        "[[regions]]\nslug = \"riverton\"\nname = \"Riverton\"\nfeeds = [\"file://{}\"]\n",
        feed.display()
    ));
    site.run(&["ingest"]).ok();
    site.add_confirmed("ada@example.org", "riverton");
    site.add_confirmed("bo@example.org", "riverton");
    site.run(&["send", "--region", "riverton", "--yes"]).ok();
    let messages = smtp.wait_for(2, Duration::from_secs(10));
    let ada = messages
        .iter()
        .find(|(rcpt, _)| rcpt.trim() == "ada@example.org")
        .unwrap();
    let header = parse_email(&ada.1)
        .header("List-Unsubscribe")
        .unwrap()
        .to_string();
    let url = header.trim_matches(['<', '>']);
    let path = &url[url.find("/unsubscribe").unwrap()..];

    let mut daemon = site
        .command(&["daemon"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_http(
        site.http_port,
        "/healthz",
        Duration::from_secs(20)
    ));
    // GET shows a page and changes nothing (link scanners follow GETs).
    let (status, body) = http(site.http_port, "GET", path, "").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("<form method=\"post\""), "{body}");
    assert_eq!(
        site.sql("SELECT state FROM subscribers WHERE email = 'ada@example.org'")[0][0],
        "confirmed"
    );
    // RFC 8058 one-click, twice: 200 both times.
    for _ in 0..2 {
        let (status, _) = http(site.http_port, "POST", path, "List-Unsubscribe=One-Click").unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(
        site.sql("SELECT state FROM subscribers WHERE email = 'ada@example.org'")[0][0],
        "unsubscribed"
    );
    // A tampered token changes nothing.
    let tampered = path.replacen("token=", "token=9", 1);
    assert_eq!(
        http(
            site.http_port,
            "POST",
            &tampered,
            "List-Unsubscribe=One-Click"
        )
        .unwrap()
        .0,
        400
    );
    signal(daemon.id(), "TERM");
    assert!(
        wait_exit(&mut daemon, Duration::from_secs(15))
            .unwrap()
            .success()
    );

    // A new article arrives; the next send reaches only the reader who stayed.
    let rows_before = smtp.messages().len();
    std::fs::write(&feed, feed_with(&["first", "second"])).unwrap();
    site.run(&["ingest"]).ok();
    site.run(&["send", "--region", "riverton", "--yes"]).ok();
    let after = smtp.wait_for(rows_before + 1, Duration::from_secs(10));
    let new: Vec<_> = after[rows_before..]
        .iter()
        .map(|(r, _)| r.trim().to_string())
        .collect();
    assert_eq!(
        new,
        ["bo@example.org"],
        "the unsubscribed reader is skipped"
    );
}
