//! What operators watch: `/metrics` read by Prometheus's own text parser (Python's
//! `prometheus_client`) with the numbers of a send just made, `/readyz` turning red
//! when the schema is behind or the SMTP server has gone quiet while mail waits, and
//! JSON log lines.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Site, SmtpServer, free_port, repo, request, wait_http};

/// Every sample of an exposition as the reference parser read it, by
/// `name{labels}`; panics if the parser refuses the text.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut child = Command::new("python3")
        .arg(repo().join("tests/support/prom_parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "prometheus_client refused the exposition (pip install prometheus_client):\n{}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn scrape(site: &Site, token: &str) -> (u16, String, String) {
    let auth = format!("Bearer {token}");
    request(
        site.http_port,
        "GET",
        "/metrics",
        &[("Authorization", &auth)],
        "",
    )
    .unwrap()
}

/// Queues one daily digest for each of `readers` readers in UTC, due now: the site's
/// clock reads 23:00 UTC, and the daily slot is set to 23:00.
const DAILY_AT_PINNED_CLOCK: &str = "0 23 * * *";

fn queue_digests(site: &Site, readers: usize) {
    site.run(&["ingest"]).ok();
    for i in 0..readers {
        site.run(&[
            "subscribers",
            "add",
            &format!("reader{i}@example.org"),
            "--region",
            "riverton",
            "--timezone",
            "UTC",
            "--confirmed",
        ])
        .ok();
    }
    let out = site
        .command(&["plan"])
        .env("HERALD__SCHEDULE__DAILY", DAILY_AT_PINNED_CLOCK)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("planned {readers} email(s)")),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `herald daemon` for `site`, its log lines in a file.
struct LoggingDaemon {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl LoggingDaemon {
    fn start(site: &Site, env: &[(&str, &str)]) -> LoggingDaemon {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut command = site.command(&["daemon"]);
        command
            .env("HERALD__SCHEDULE__DAILY", DAILY_AT_PINNED_CLOCK)
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().unwrap();
        assert!(
            wait_http(site.http_port, "/healthz", Duration::from_secs(20)),
            "the daemon did not come up"
        );
        LoggingDaemon { child, log }
    }

    /// SIGTERM, a clean exit, and the log.
    fn stop(mut self) -> String {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        std::fs::read_to_string(self.log.path()).unwrap()
    }
}

impl Drop for LoggingDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `/readyz` until its body contains `wanted`, returning (status, body).
fn readyz_until(site: &Site, wanted: &str, timeout: Duration) -> (u16, String) {
    let start = Instant::now();
    loop {
        let (status, _, body) = request(site.http_port, "GET", "/readyz", &[], "").unwrap();
        if body.contains(wanted) || start.elapsed() > timeout {
            return (status, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_match_a_send_just_made_and_need_the_admin_token() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    let token = site
        .run(&["admin", "token", "create", "prometheus"])
        .ok()
        .stdout()
        .trim()
        .to_string();
    let readers = 5;
    queue_digests(&site, readers);
    let daemon = LoggingDaemon::start(&site, &[]);

    // Without the token, or with a wrong one: 401, and no numbers.
    let (status, _, body) = request(site.http_port, "GET", "/metrics", &[], "").unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("herald_"), "{body}");
    let (status, _, _) = scrape(&site, "herald_not-a-real-token");
    assert_eq!(status, 401);

    smtp.wait_for(readers, Duration::from_secs(30));
    // The daemon's counters move just before the outcomes are committed: read until
    // the ledger shows every row sent.
    let sent = "herald_deliveries{kind=\"digest\",state=\"sent\"}";
    let start = Instant::now();
    let samples = loop {
        let (status, head, body) = scrape(&site, &token);
        assert_eq!(status, 200, "{body}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        let samples = parse_metrics(&body);
        if samples.get(sent) == Some(&(readers as f64)) || start.elapsed() > Duration::from_secs(20)
        {
            break samples;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let get = |name: &str| {
        *samples
            .get(name)
            .unwrap_or_else(|| panic!("no sample {name} in {samples:#?}"))
    };
    let n = readers as f64;
    assert_eq!(smtp.messages().len(), readers);
    assert_eq!(get(sent), n);
    assert_eq!(
        get("herald_deliveries{kind=\"digest\",state=\"queued\"}"),
        0.0
    );
    assert_eq!(get("herald_deliveries{kind=\"alert\",state=\"sent\"}"), 0.0);
    assert_eq!(get("herald_smtp_replies_total{class=\"2xx\"}"), n);
    assert_eq!(get("herald_smtp_replies_total{class=\"4xx\"}"), 0.0);
    assert_eq!(get("herald_smtp_replies_total{class=\"5xx\"}"), 0.0);
    assert_eq!(get("herald_send_latency_seconds_count{}"), n);
    assert_eq!(get("herald_send_latency_seconds_bucket{le=\"+Inf\"}"), n);
    assert!(get("herald_send_latency_seconds_sum{}") > 0.0);
    assert_eq!(get("herald_readers{state=\"confirmed\"}"), n);
    assert_eq!(get("herald_readers{state=\"pending\"}"), 0.0);
    // Planned slots are not manual sends: none is in progress.
    assert_eq!(get("herald_sends_in_progress{state=\"sending\"}"), 0.0);
    assert_eq!(get("herald_queue_depth{lane=\"digest\"}"), 0.0);
    assert_eq!(get("herald_queue_oldest_age_seconds{lane=\"digest\"}"), 0.0);
    assert!(get("herald_smtp_last_reply_age_seconds{}") >= 0.0);
    for result in ["ok", "not_modified", "failed"] {
        get(&format!("herald_feed_polls_total{{result=\"{result}\"}}"));
    }
    // The ledger agrees with the SMTP server, row for row.
    assert_eq!(
        site.sql("SELECT COUNT(*) FROM deliveries WHERE state = 'sent'")[0][0],
        readers.to_string()
    );

    // A revoked token is refused like any other.
    site.run(&["admin", "token", "revoke", "prometheus"]).ok();
    let (status, _, _) = scrape(&site, &token);
    assert_eq!(status, 401);
    daemon.stop();
}

#[test]
fn readyz_says_when_migrations_are_not_current() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    // The migrations this build carries (versions may skip numbers), and the newest.
    let versions: Vec<i64> = std::fs::read_dir(repo().join("migrations/sqlite"))
        .unwrap()
        .filter_map(|entry| {
            entry
                .unwrap()
                .file_name()
                .to_str()?
                .get(..4)?
                .parse::<i64>()
                .ok()
        })
        .collect();
    let latest = *versions.iter().max().unwrap();
    let count = versions.len();
    let daemon = LoggingDaemon::start(&site, &[]);
    let (status, body) = readyz_until(&site, "migrations: ok", Duration::from_secs(10));
    assert!(
        body.contains(&format!("migrations: ok, {count} applied")),
        "{body}"
    );
    assert!(body.contains("smtp: ok, nothing waiting"), "{body}");
    assert_eq!(status, 200, "{body}");

    // As if the database had been restored from before the last migration.
    site.sql_write(&format!(
        "DELETE FROM _sqlx_migrations WHERE version = {latest}"
    ));
    let (status, body) = readyz_until(&site, "pending", Duration::from_secs(10));
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!(
            "migrations: 1 pending ({latest:04}); run `herald migrate`"
        )),
        "{body}"
    );
    // And as if a newer herald had migrated it further.
    site.sql_write(&format!(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time)
         SELECT {latest}, description, installed_on, success, checksum, execution_time
           FROM _sqlx_migrations WHERE version = 1"
    ));
    site.sql_write(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time)
         SELECT 99, 'from the future', installed_on, success, checksum, execution_time
           FROM _sqlx_migrations WHERE version = 1",
    );
    let (status, body) = readyz_until(&site, "does not know", Duration::from_secs(10));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("(0099)"), "{body}");
    daemon.stop();
}

#[test]
fn readyz_says_when_the_smtp_server_has_not_answered_while_mail_waits() {
    let smtp_port = free_port();
    let site = Site::new(smtp_port);
    queue_digests(&site, 2);
    // smtp.timeout 1 s: the server must have answered within 3 s while mail is due.
    let daemon = LoggingDaemon::start(
        &site,
        &[
            ("HERALD__SMTP__TIMEOUT", "1s"),
            ("HERALD__DELIVER__RETRY_BASE", "1s"),
            ("HERALD__DELIVER__RETRY_MAX", "1s"),
        ],
    );
    let (status, body) = readyz_until(&site, "smtp: not reached", Duration::from_secs(20));
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("smtp: not reached recently: no reply yet (limit 3s), 2 row(s) waiting"),
        "{body}"
    );

    // The server comes up: the mail goes out and herald is ready again.
    let smtp = SmtpServer::start_on(smtp_port, &[]);
    assert_eq!(smtp.wait_for(2, Duration::from_secs(30)).len(), 2);
    let (status, body) = readyz_until(&site, "smtp: ok", Duration::from_secs(20));
    assert!(
        body.contains("smtp: ok, nothing waiting, last reply"),
        "{body}"
    );
    assert_eq!(status, 200, "{body}");
    daemon.stop();
}

#[test]
fn log_lines_are_json_when_asked_and_text_by_default() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    let json = LoggingDaemon::start(
        &site,
        &[("HERALD__LOG__FORMAT", "json"), ("HERALD_LOG", "info")],
    )
    .stop();
    let lines: Vec<&str> = json.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    let mut seen_limit = false;
    for line in &lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(event["timestamp"].is_string(), "{line}");
        assert!(event["level"].is_string(), "{line}");
        assert!(event["message"].is_string(), "{line}");
        if event["message"] == "open-file limit" {
            // The event's fields sit beside the message.
            assert!(event["soft"].is_number(), "{line}");
            seen_limit = true;
        }
    }
    assert!(seen_limit, "{json}");

    let text = LoggingDaemon::start(&site, &[("HERALD_LOG", "info")]).stop();
    assert!(text.contains("open-file limit"), "{text}");
    assert!(
        text.lines().all(|l| !l.starts_with('{')),
        "text lines by default: {text}"
    );
}
