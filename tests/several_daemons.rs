//! Several `herald daemon` processes on one PostgreSQL database, as a site that outgrew
//! one machine runs them: three daemons, 20,000 confirmed readers and one daily slot,
//! into Postfix's `smtp-sink`. With no faults every reader gets exactly one email and
//! every row is `sent`; with one daemon killed by SIGKILL mid-run the other two send its
//! rows within `deliver.worker_timeout` plus a few seconds, nobody is missed, and the
//! duplicates stay within the killed daemon's connections. A site-wide
//! `smtp.rate_per_second` holds over the three daemons together, as the sink measures it.
//! Skipped unless `HERALD_TEST_POSTGRES_URL` is set.

mod support;

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::sink::{Sink, arrivals, received_settled, smtp_sink_waiting};
use support::{Site, free_port};

/// Connections of each daemon.
const CONNECTIONS: usize = 20;
/// A short worker timeout keeps the killed daemon's test quick. The other tests keep
/// the default (30 s): on a loaded machine a heartbeat can come late by more than 3 s,
/// and a live worker taken for dead may send the few messages it had in hand again.
const WORKER_TIMEOUT: Duration = Duration::from_secs(3);

/// A scratch PostgreSQL database, dropped when the test ends.
struct Database {
    base: String,
    name: String,
    url: String,
}

impl Database {
    fn create(base: &str, label: &str) -> Database {
        let name = format!("herald_test_{label}_{}", std::process::id());
        psql(
            base,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
        psql(base, &format!("CREATE DATABASE {name}"));
        let mut url = url::Url::parse(base).unwrap();
        url.set_path(&name);
        Database {
            base: base.to_string(),
            name,
            url: url.to_string(),
        }
    }

    fn query(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }

    fn count(&self, sql: &str) -> usize {
        self.query(sql).parse().unwrap()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(&self.base)
            .args([
                "-Atc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .arg(url)
        .args(["-Atc", sql])
        .output()
        .expect("psql must be installed for the PostgreSQL tests");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn postgres() -> Option<String> {
    let url = std::env::var("HERALD_TEST_POSTGRES_URL").ok();
    if url.is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: set HERALD_TEST_POSTGRES_URL to run the several-daemon tests"
        );
    }
    url
}

/// A site on `db` with `readers` confirmed readers of Riverton in UTC, whose daily slot
/// is 23:00, the minute the site's clock is pinned to: due once, when the daemons start.
fn site(port: u16, db: &Database, readers: usize, domain: &str) -> Site {
    assert!(support::PINNED_CLOCK.ends_with("T23:00:00Z"));
    let site = Site::new(port);
    let run = |args: &[&str]| {
        let output = site
            .command(args)
            .env("HERALD__DATABASE__URL", &db.url)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&["migrate"]);
    run(&["ingest"]);
    let csv = site.dir.path().join("readers.csv");
    let mut text = String::from("email,regions,cadence,timezone\n");
    for i in 0..readers {
        text.push_str(&format!("reader{i}@{domain},riverton,daily,UTC\n"));
    }
    std::fs::write(&csv, text).unwrap();
    run(&[
        "subscribers",
        "import",
        csv.to_str().unwrap(),
        "--confirmed",
    ]);
    site
}

/// Starts one `herald daemon` on `db`, on its own HTTP port, planning every 200 ms;
/// `extra` adds settings. Its log goes to `daemon-N.log` in the site's folder.
fn daemon(site: &Site, db: &Database, n: usize, extra: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(site.dir.path().join(format!("daemon-{n}.log"))).unwrap();
    site.command(&["daemon"])
        .env("HERALD__DATABASE__URL", &db.url)
        .env("HERALD__HTTP__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("HERALD__SCHEDULE__DAILY", "0 23 * * *")
        .env("HERALD__SCHEDULE__TICK", "200ms")
        .env("HERALD__SMTP__CONNECTIONS", CONNECTIONS.to_string())
        .env("HERALD__SMTP__TIMEOUT", "10s")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Waits until `readers` rows are `sent`, failing after `within`.
fn wait_all_sent(db: &Database, readers: usize, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let sent = db.count("SELECT COUNT(*) FROM deliveries WHERE state = 'sent'");
        if sent == readers {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{sent} of {readers} rows sent after {within:?}: {}",
            db.query("SELECT state || ':' || COUNT(*) FROM deliveries GROUP BY state")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// SIGTERM, then a clean exit.
fn stop(mut child: Child) {
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "a daemon exited with {status:?}");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "a daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the daemons logged about workers and claims, and their warnings, to read when
/// an assertion fails.
fn daemon_logs(site: &Site) -> String {
    let mut out = String::new();
    for n in 0..3 {
        let path = site.dir.path().join(format!("daemon-{n}.log"));
        for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
            if line.contains("WARN") || line.contains("ERROR") || line.contains("dead") {
                out.push_str(&format!("daemon {n}: {line}\n"));
            }
        }
    }
    out
}

/// Copies per reader, the readers with none, and the duplicates.
fn tally(sink: &Sink, readers: usize, domain: &str) -> (usize, usize) {
    let copies = received_settled(sink, readers, Duration::from_secs(30));
    let missing = (0..readers)
        .filter(|i| !copies.contains_key(&format!("reader{i}@{domain}")))
        .count();
    let total: usize = copies.values().sum();
    assert_eq!(
        copies.len() + missing,
        readers,
        "mail went to addresses that are not readers"
    );
    (missing, total - copies.len())
}

const READERS: usize = 20_000;

#[test]
fn three_daemons_send_a_daily_slot_to_20000_readers_exactly_once() {
    let Some(base) = postgres() else { return };
    let db = Database::create(&base, "three");
    let port = free_port();
    let sink = smtp_sink_waiting(port, "0");
    let site = site(port, &db, READERS, "three.example");
    let daemons: Vec<Child> = (0..3).map(|n| daemon(&site, &db, n, &[])).collect();
    let took = wait_all_sent(&db, READERS, Duration::from_secs(600));
    println!("three daemons sent {READERS} digests in {took:.1?}");
    for child in daemons {
        stop(child);
    }
    assert_eq!(
        db.query("SELECT state || ':' || COUNT(*) FROM deliveries GROUP BY state"),
        format!("sent:{READERS}")
    );
    assert_eq!(
        db.count("SELECT COUNT(DISTINCT subscriber_id) FROM deliveries"),
        READERS,
        "one row per reader: the slot was planned once"
    );
    let (missing, duplicates) = tally(&sink, READERS, "three.example");
    assert_eq!(
        (missing, duplicates),
        (0, 0),
        "exactly one email per reader\n{}",
        daemon_logs(&site)
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM workers"), 0);
}

#[test]
fn a_daemon_killed_mid_run_leaves_its_rows_to_the_others_within_the_worker_timeout() {
    let Some(base) = postgres() else { return };
    let db = Database::create(&base, "killed");
    let port = free_port();
    let sink = smtp_sink_waiting(port, "0");
    let readers = READERS;
    let site = site(port, &db, readers, "killed.example");
    let timeout = format!("{}s", WORKER_TIMEOUT.as_secs());
    let settings = [("HERALD__DELIVER__WORKER_TIMEOUT", timeout.as_str())];
    let mut daemons: Vec<Child> = (0..3).map(|n| daemon(&site, &db, n, &settings)).collect();
    // Killed once it holds a claim (a batch waiting for its connections) and a tenth of
    // the run is sent.
    let victim = daemons.remove(0);
    let pid = victim.id();
    let start = Instant::now();
    // Its claims are read just before the kill: on the same machine the others see
    // its process gone at their next beat, and give them back within a second.
    let held: Vec<String> = loop {
        let owner = db.query(&format!(
            "SELECT string_agg(id::text, ', ') FROM workers WHERE pid = {pid}"
        ));
        if !owner.is_empty()
            && db.count("SELECT COUNT(*) FROM deliveries WHERE state = 'sent'") >= 2_000
        {
            let held: Vec<String> = db
                .query(&format!(
                    "SELECT id FROM deliveries WHERE state = 'sending' AND lease_owner IN ({owner})"
                ))
                .lines()
                .map(str::to_string)
                .collect();
            if held.len() >= CONNECTIONS {
                break held;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the daemon to kill never held its connections' worth of rows"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut victim = victim;
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let killed = Instant::now();
    assert!(!held.is_empty(), "the killed daemon held rows");
    let held_unsent = format!(
        "SELECT COUNT(*) FROM deliveries WHERE state <> 'sent' AND id IN ({})",
        held.join(", ")
    );
    let moved_after = loop {
        if db.count(&held_unsent) == 0 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "the killed daemon's rows were still waiting two minutes after the kill"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "the {} rows the killed daemon held were all sent {moved_after:.1?} after the kill",
        held.len()
    );
    // The lease is five minutes: only the others noticing the dead worker moves them
    // this soon. The few seconds on top leave room for a loaded machine to send them.
    assert!(
        moved_after < WORKER_TIMEOUT + Duration::from_secs(10),
        "the killed daemon's rows took {moved_after:?}, more than the worker timeout and a few seconds"
    );
    wait_all_sent(&db, readers, Duration::from_secs(600));
    for child in daemons {
        stop(child);
    }
    let (missing, duplicates) = tally(&sink, readers, "killed.example");
    println!("{duplicates} duplicates");
    assert_eq!(missing, 0, "every reader got the digest");
    assert!(
        duplicates <= CONNECTIONS,
        "{duplicates} duplicates > the killed daemon's {CONNECTIONS} connections"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM workers"), 0);
}

#[test]
fn a_site_wide_rate_holds_over_three_daemons() {
    let Some(base) = postgres() else { return };
    let db = Database::create(&base, "rate");
    let port = free_port();
    let sink = smtp_sink_waiting(port, "0");
    const RATE: f64 = 20.0;
    let readers = 300;
    let site = site(port, &db, readers, "rate.example");
    // Small batches, so each daemon claims a share of the slot and sends it.
    let settings = [
        ("HERALD__SMTP__RATE_PER_SECOND", "20"),
        ("HERALD__DELIVER__BATCH_SIZE", "10"),
    ];
    let daemons: Vec<Child> = (0..3).map(|n| daemon(&site, &db, n, &settings)).collect();
    wait_all_sent(&db, readers, Duration::from_secs(300));
    for child in daemons {
        stop(child);
    }
    let (missing, duplicates) = tally(&sink, readers, "rate.example");
    assert_eq!(
        (missing, duplicates),
        (0, 0),
        "rows: {}\n{}",
        db.query("SELECT COUNT(*) || ' rows, ' || COUNT(DISTINCT subscriber_id) || ' readers' FROM deliveries"),
        daemon_logs(&site)
    );
    let times = arrivals(&sink);
    assert_eq!(times.len(), readers);
    let span = |a: usize, b: usize| {
        times[b]
            .duration_since(times[a])
            .unwrap_or_default()
            .as_secs_f64()
    };
    // Over the run: `readers` messages take at least `readers - 1` intervals, less the
    // documented burst of two, less a tenth for the sink's clock and the machine's load.
    // Each daemon pacing itself alone would send three times as fast.
    let overall = (readers - 1) as f64 / span(0, readers - 1);
    println!("{readers} messages at {overall:.1} msg/s with rate_per_second = {RATE}");
    assert!(
        span(0, readers - 1) >= ((readers - 3) as f64 / RATE) * 0.9,
        "the three daemons sent at {overall:.1} msg/s, over the site's {RATE}"
    );
    // And in every stretch of 60 messages (three seconds' worth).
    let window = 60;
    for a in 0..readers - window {
        let seconds = span(a, a + window);
        assert!(
            seconds >= ((window - 2) as f64 / RATE) * 0.9,
            "{window} messages from the {a}th in {seconds:.2} s: over {RATE} msg/s"
        );
    }
}
