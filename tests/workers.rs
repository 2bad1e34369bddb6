//! Dead workers with the real binary: `herald send` is killed with SIGKILL three times
//! mid-send, with `deliver.lease` at its default five minutes and `deliver.worker_timeout`
//! at 3 s, and `herald deliver --until-empty` restarted after each kill. The killed
//! workers' claims move again within seconds of their heartbeat stopping, not after the
//! lease: every row is `sent` well within a minute of the last kill, every reader has a
//! copy, duplicates stay within what was in flight (≤ 3 × connections), and every
//! worker's row is gone at the end (the killed ones deleted by the live, the others on
//! their clean exit).

mod support;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::sink::{received_settled, smtp_sink};
use support::{Site, free_port};

const CONNECTIONS: usize = 100;

fn spawn(site: &Site, args: &[&str]) -> Child {
    site.command(args)
        .env("HERALD__SMTP__CONNECTIONS", CONNECTIONS.to_string())
        .env("HERALD__SMTP__TIMEOUT", "10s")
        .env("HERALD__DELIVER__BATCH_SIZE", "200")
        .env("HERALD__DELIVER__WORKER_TIMEOUT", "3s")
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(site.dir.path().join("herald.log"))
                .unwrap(),
        )
        .spawn()
        .unwrap()
}

fn count(site: &Site, query: &str) -> usize {
    site.sql(query)[0][0].parse().unwrap()
}

fn in_state(site: &Site, state: &str) -> usize {
    count(
        site,
        &format!("SELECT COUNT(*) FROM deliveries WHERE state = '{state}'"),
    )
}

#[test]
fn a_killed_senders_rows_move_again_within_seconds_not_after_the_lease() {
    let readers: usize = std::env::var("HERALD_WORKERS_READERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let seed = std::env::var("HERALD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("workers test: {readers} readers, seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let port = free_port();
    let sink = smtp_sink(port);
    let site = Site::new(port);
    site.run(&["ingest"]).ok();
    let csv = site.dir.path().join("readers.csv");
    let mut text = String::from("email,regions,cadence,timezone\n");
    for i in 0..readers {
        text.push_str(&format!("reader{i}@workers.example,riverton,daily,UTC\n"));
    }
    std::fs::write(&csv, text).unwrap();
    site.run(&[
        "subscribers",
        "import",
        csv.to_str().unwrap(),
        "--confirmed",
    ])
    .ok();

    let mut child = spawn(&site, &["send", "--region", "riverton", "--yes"]);
    let mut kills = 0;
    let mut last_kill: Option<Instant> = None;
    let mut held_at_kill = 0;
    // The rows the last killed worker held, and how long after the kill they were all sent.
    let mut held_ids: Vec<String> = Vec::new();
    let mut moved_after: Option<Duration> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        assert!(Instant::now() < deadline, "did not finish in time");
        if kills < 3 {
            std::thread::sleep(Duration::from_millis(rng.u64(1_500..5_000)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                last_kill = Some(Instant::now());
                held_ids = site
                    .sql("SELECT id FROM deliveries WHERE state = 'sending'")
                    .into_iter()
                    .map(|row| row[0].clone())
                    .collect();
                held_at_kill = held_ids.len();
                println!(
                    "kill {kills}: {} sent so far, {held_at_kill} claimed by the killed worker",
                    in_state(&site, "sent")
                );
            }
        }
        if kills == 3 && moved_after.is_none() && !held_ids.is_empty() {
            let unsent = count(
                &site,
                &format!(
                    "SELECT COUNT(*) FROM deliveries WHERE state <> 'sent' AND id IN ({})",
                    held_ids.join(", ")
                ),
            );
            if unsent == 0 {
                moved_after = last_kill.map(|kill| kill.elapsed());
            }
        }
        let exited = child.try_wait().unwrap().is_some();
        if exited && in_state(&site, "sent") == readers {
            break;
        }
        if exited {
            std::thread::sleep(Duration::from_millis(200));
            child = spawn(&site, &["deliver", "--until-empty"]);
        } else if kills == 3 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let finished = last_kill.expect("killed at least once").elapsed();
    let _ = child.wait();
    assert_eq!(
        kills, 3,
        "the sender must have been killed three times while working"
    );
    assert!(
        held_at_kill > 0,
        "the last kill must leave claimed rows behind"
    );
    let moved_after = moved_after.expect("the killed worker's rows were all sent");
    println!(
        "the {held_at_kill} rows the last killed worker held were sent {:.1} s after the kill; every row {:.1} s after it",
        moved_after.as_secs_f64(),
        finished.as_secs_f64()
    );
    assert!(
        moved_after < Duration::from_secs(20),
        "the killed worker's rows took {moved_after:?} to move after its heartbeat stopped"
    );
    assert!(
        finished < Duration::from_secs(60),
        "the killed worker's rows took {finished:?}: they waited for their lease"
    );

    let copies = received_settled(&sink, readers, Duration::from_secs(20));
    let missing = (0..readers)
        .filter(|i| !copies.contains_key(&format!("reader{i}@workers.example")))
        .count();
    assert_eq!(missing, 0, "every reader received at least one copy");
    let total: usize = copies.values().sum();
    let duplicates = total - copies.len();
    println!(
        "{total} messages for {} readers: {duplicates} duplicates",
        copies.len()
    );
    assert!(
        duplicates <= 3 * CONNECTIONS,
        "{duplicates} duplicates > 3 × {CONNECTIONS} connections"
    );
    assert_eq!(
        count(&site, "SELECT COUNT(*) FROM workers"),
        0,
        "every worker's row is gone"
    );
}

/// One process on SQLite, killed and restarted on the same machine: the restarted
/// process sees that the killed one's process is gone and sends its rows at once, with
/// `deliver.worker_timeout` at ten minutes and the lease at its default five, so neither
/// the heartbeat's age nor the lease can be what moved them.
#[test]
fn a_restarted_process_sends_the_killed_ones_rows_at_once() {
    const READERS: usize = 1_500;
    let port = free_port();
    let sink = smtp_sink(port);
    let site = Site::new(port);
    site.run(&["ingest"]).ok();
    let csv = site.dir.path().join("readers.csv");
    let mut text = String::from("email,regions,cadence,timezone\n");
    for i in 0..READERS {
        text.push_str(&format!("reader{i}@restart.example,riverton,daily,UTC\n"));
    }
    std::fs::write(&csv, text).unwrap();
    site.run(&[
        "subscribers",
        "import",
        csv.to_str().unwrap(),
        "--confirmed",
    ])
    .ok();
    let with_long_timeout = |args: &[&str]| {
        let mut command = site.command(args);
        command
            .env("HERALD__SMTP__CONNECTIONS", CONNECTIONS.to_string())
            .env("HERALD__SMTP__TIMEOUT", "10s")
            .env("HERALD__DELIVER__BATCH_SIZE", "200")
            .env("HERALD__DELIVER__WORKER_TIMEOUT", "600s")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command.spawn().unwrap()
    };
    let mut child = with_long_timeout(&["send", "--region", "riverton", "--yes"]);
    // Killed once it holds claims: the sink answers each DATA after a second, so a
    // hundred connections hold a hundred rows and more are claimed behind them.
    let start = Instant::now();
    while in_state(&site, "sending") < CONNECTIONS {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the send never held its connections' worth of rows"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let held: Vec<String> = site
        .sql("SELECT id FROM deliveries WHERE state = 'sending'")
        .into_iter()
        .map(|row| row[0].clone())
        .collect();
    assert!(!held.is_empty(), "the killed process held rows");
    assert_eq!(count(&site, "SELECT COUNT(*) FROM workers"), 1);

    let restarted = Instant::now();
    let mut child = with_long_timeout(&["deliver", "--until-empty"]);
    let held_unsent = format!(
        "SELECT COUNT(*) FROM deliveries WHERE state <> 'sent' AND id IN ({})",
        held.join(", ")
    );
    let moved_after = loop {
        if count(&site, &held_unsent) == 0 {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(120),
            "the killed process's rows were still waiting two minutes after the restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let status = child.wait().unwrap();
    assert!(status.success());
    println!(
        "the {} rows the killed process held were sent {:.1} s after the restart",
        held.len(),
        moved_after.as_secs_f64()
    );
    // Far sooner than the ten-minute worker timeout or the five-minute lease; the bound
    // leaves room for a slow machine to send the whole run behind them.
    assert!(
        moved_after < Duration::from_secs(60),
        "the killed process's rows took {moved_after:?} to move"
    );
    assert_eq!(in_state(&site, "sent"), READERS, "every row is sent");
    let copies = received_settled(&sink, READERS, Duration::from_secs(20));
    assert_eq!(copies.len(), READERS, "every reader received a copy");
    let duplicates: usize = copies.values().sum::<usize>() - copies.len();
    assert!(
        duplicates <= CONNECTIONS,
        "{duplicates} duplicates > {CONNECTIONS} connections"
    );
    assert_eq!(
        count(&site, "SELECT COUNT(*) FROM workers"),
        0,
        "the killed worker's row went with its claims"
    );
}
