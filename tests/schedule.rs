//! Scheduled digests through the real binary: `herald plan` and the daemon's planner.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{Site, SmtpServer, parse_email, wait_http};

#[test]
fn plan_queues_a_due_slot_once_and_dry_run_writes_nothing() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    site.run(&["ingest"]).ok();
    site.run(&[
        "subscribers",
        "add",
        "utc@example.org",
        "--region",
        "riverton",
        "--timezone",
        "UTC",
        "--confirmed",
    ])
    .ok();
    site.run(&[
        "subscribers",
        "add",
        "later@example.org",
        "--region",
        "riverton",
        "--timezone",
        "Pacific/Kiritimati",
        "--confirmed",
    ])
    .ok();
    // A daily slot at 23:00, the minute the site's clock is pinned to (23:00 UTC): due
    // now for the UTC reader only (23:00 in Kiritimati was 14 hours ago, too stale).
    assert!(support::PINNED_CLOCK.ends_with("T23:00:00Z"));
    let cron = "0 23 * * *";
    let plan = |args: &[&str]| {
        let mut cmd = site.command(args);
        cmd.env("HERALD__SCHEDULE__DAILY", cron);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dry = plan(&["plan", "--dry-run"]);
    assert!(dry.contains("UTC") && dry.contains("1 digest(s)"), "{dry}");
    assert!(dry.contains("utc@example.org"), "{dry}");
    assert!(!dry.contains("later@example.org"), "{dry}");
    assert_eq!(
        site.sql("SELECT COUNT(*) FROM deliveries")[0][0],
        "0",
        "a dry run writes nothing"
    );

    let first = plan(&["plan"]);
    assert!(first.contains("planned 1 email(s)"), "{first}");
    let again = plan(&["plan"]);
    assert!(again.contains("planned 0 email(s)"), "{again}");

    site.run(&["deliver", "--until-empty"]).ok();
    let messages = smtp.wait_for(1, Duration::from_secs(10));
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].0.trim(), "utc@example.org");
    let subject = parse_email(&messages[0].1)
        .header("Subject")
        .unwrap()
        .to_string();
    assert!(subject.contains("daily digest"), "{subject}");

    let bad = site.run(&["plan", "--at", "yesterday"]).failed();
    assert!(bad.stderr().contains("RFC 3339"), "{}", bad.stderr());
}

#[test]
fn the_daemon_plans_and_delivers_scheduled_digests_by_itself() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    site.run(&["ingest"]).ok();
    site.run(&[
        "subscribers",
        "add",
        "ada@example.org",
        "--region",
        "cedar-falls",
        "--timezone",
        "Asia/Kolkata",
        "--confirmed",
    ])
    .ok();
    let mut daemon = site
        .command(&["daemon"])
        // A "daily" slot every two seconds, checked every 200 ms.
        .env("HERALD__SCHEDULE__DAILY", "*/2 * * * * *")
        .env("HERALD__SCHEDULE__TICK", "200ms")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_http(
        site.http_port,
        "/healthz",
        Duration::from_secs(20)
    ));
    let messages = smtp.wait_for(1, Duration::from_secs(20));
    assert_eq!(messages.len(), 1, "the daemon sent the due digest");
    assert_eq!(messages[0].0.trim(), "ada@example.org");
    // Later slots find nothing new: no second email.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(smtp.messages().len(), 1);
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    assert_eq!(site.sql("SELECT state FROM deliveries")[0][0], "sent");
}
